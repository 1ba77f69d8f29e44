//! Pillow's `Image.resize` for 8-bit RGB, ported bit for bit (Pillow 13.0).
//!
//! transformers' PIL backend resizes with `PIL.Image.resize(size, resample)` and no
//! `reducing_gap`. For the convolution filters Pillow runs `ImagingResample`
//! (`libImaging/Resample.c`): per output pixel a window of filter weights, computed in `f64`,
//! normalised to sum to 1 and rounded to 22-bit fixed point (`i32`); one pass along each axis
//! into an 8-bit intermediate image, each pass rounding and clamping to `0..=255`. The
//! horizontal pass goes first, except when the height shrinks by more than twice as many pixels
//! as the width (see [`vertical_first`]). Downscaling widens the filter by the scale factor
//! (antialiasing). `NEAREST` is an affine transform instead (`ImagingScaleAffine`), and a resize
//! to the same size is a plain copy.
//!
//! `fast_image_resize` implements the same convolution, but with 14-bit `i16` weights (as
//! pillow-simd) and always the vertical pass first for 8-bit images; the weights move results by
//! one 8-bit step here and there, and the pass order changes which overshoots get clipped (tens
//! of steps next to hard edges with bicubic or Lanczos). This port gives Pillow's exact bytes.
//!
//! [`resize_window`] computes only a window of the resized image (the part a centre crop keeps):
//! every output pixel of Pillow's resize depends only on its own row and column weights, so the
//! window is identical to cropping the full resize, at a fraction of the cost and memory.

use image::RgbImage;

/// Pillow's resampling filters, by their `PIL.Image.Resampling` codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resample {
    /// 0: `NEAREST`.
    Nearest,
    /// 1: `LANCZOS` (`ANTIALIAS`), a 3-lobed truncated sinc.
    Lanczos,
    /// 2: `BILINEAR`, the triangle filter.
    Bilinear,
    /// 3: `BICUBIC`, the cubic convolution with a = -0.5 (Catmull-Rom).
    Bicubic,
    /// 4: `BOX`.
    Box,
    /// 5: `HAMMING`.
    Hamming,
}

impl Resample {
    /// The filter for a `PIL.Image.Resampling` code (`resample` in `preprocessor_config.json`).
    pub fn from_pil_code(code: i64) -> Option<Self> {
        Some(match code {
            0 => Self::Nearest,
            1 => Self::Lanczos,
            2 => Self::Bilinear,
            3 => Self::Bicubic,
            4 => Self::Box,
            5 => Self::Hamming,
            _ => return None,
        })
    }

    /// The `PIL.Image.Resampling` code.
    pub fn pil_code(self) -> u8 {
        match self {
            Self::Nearest => 0,
            Self::Lanczos => 1,
            Self::Bilinear => 2,
            Self::Bicubic => 3,
            Self::Box => 4,
            Self::Hamming => 5,
        }
    }

    /// The convolution kernel and its support (radius) at scale 1; `None` for `Nearest`.
    fn kernel(self) -> Option<Kernel> {
        match self {
            Self::Nearest => None,
            Self::Lanczos => Some((lanczos_filter, 3.0)),
            Self::Bilinear => Some((bilinear_filter, 1.0)),
            Self::Bicubic => Some((bicubic_filter, 2.0)),
            Self::Box => Some((box_filter, 0.5)),
            Self::Hamming => Some((hamming_filter, 1.0)),
        }
    }
}

// The filter functions of Resample.c, expression for expression.

fn box_filter(x: f64) -> f64 {
    if x > -0.5 && x <= 0.5 {
        1.0
    } else {
        0.0
    }
}

fn bilinear_filter(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

fn hamming_filter(x: f64) -> f64 {
    let x = x.abs();
    if x == 0.0 {
        1.0
    } else if x >= 1.0 {
        0.0
    } else {
        let x = x * std::f64::consts::PI;
        // Pillow writes the constants as C `float` literals (0.54f, 0.46f).
        x.sin() / x * (f64::from(0.54f32) + f64::from(0.46f32) * x.cos())
    }
}

fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

fn sinc_filter(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

fn lanczos_filter(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) {
        sinc_filter(x) * sinc_filter(x / 3.0)
    } else {
        0.0
    }
}

/// A filter function and its support (radius) at scale 1.
type Kernel = (fn(f64) -> f64, f64);

/// Fixed-point precision of the weights (Resample.c: `PRECISION_BITS = 32 - 8 - 2`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// A rectangle of the resized image: columns `x..x + width`, rows `y..y + height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// The weights of some output pixels along one axis: for each, the first input index and the
/// fixed-point weights of the input pixels from there on.
struct Weights {
    start: Vec<usize>,
    /// Offsets into `k`: pixel `i` has weights `k[offset[i]..offset[i + 1]]`.
    offset: Vec<usize>,
    k: Vec<i32>,
}

impl Weights {
    fn of(&self, i: usize) -> (usize, &[i32]) {
        (self.start[i], &self.k[self.offset[i]..self.offset[i + 1]])
    }

    /// Input range `[first, last)` that output pixels `0..n` read.
    fn input_span(&self) -> (usize, usize) {
        let n = self.start.len();
        let first = (0..n).map(|i| self.start[i]).min().unwrap_or(0);
        let last = (0..n).map(|i| self.start[i] + (self.offset[i + 1] - self.offset[i])).max().unwrap_or(0);
        (first, last)
    }
}

/// Number of weights [`resize_window`] would compute along one axis (its memory use, in `i32`s).
pub(crate) fn weight_count(in_size: u32, out_size: u32, filter: Resample, window: u32) -> u64 {
    let Some((_, support)) = filter.kernel() else {
        return 0;
    };
    let scale = f64::from(in_size as f32) / f64::from(out_size);
    let support = support * scale.max(1.0);
    u64::from(window) * ((support.ceil() as u64) * 2 + 1)
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` of Resample.c, for output pixels
/// `first..first + count` of a resize from `in_size` to `out_size` (box = the whole input).
fn precompute(in_size: u32, out_size: u32, kernel: Kernel, first: u32, count: u32) -> Weights {
    let (filter, filter_support) = kernel;
    // Pillow's box is `float in0 = 0, in1 = in_size`; `(double)(in1 - in0) / outSize`.
    let in0 = 0.0f64;
    let scale = f64::from(in_size as f32) / f64::from(out_size);
    let filterscale = scale.max(1.0);
    let support = filter_support * filterscale;
    let ss = 1.0 / filterscale;
    let mut weights = Weights {
        start: Vec::with_capacity(count as usize),
        offset: Vec::with_capacity(count as usize + 1),
        k: Vec::new(),
    };
    weights.offset.push(0);
    let mut prekk: Vec<f64> = Vec::new();
    for xx in first..first + count {
        let center = in0 + (f64::from(xx) + 0.5) * scale;
        // (int)(...) truncates towards zero, as `as` does.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size));
        let n = (xmax - xmin).max(0);
        prekk.clear();
        let mut ww = 0.0f64;
        for x in 0..n {
            let w = filter(((x + xmin) as f64 - center + 0.5) * ss);
            prekk.push(w);
            ww += w;
        }
        for w in prekk.iter_mut() {
            if ww != 0.0 {
                *w /= ww;
            }
        }
        let one = f64::from(1u32 << PRECISION_BITS);
        weights.k.extend(prekk.iter().map(|&w| if w < 0.0 { (-0.5 + w * one) as i32 } else { (0.5 + w * one) as i32 }));
        weights.start.push(xmin as usize);
        weights.offset.push(weights.k.len());
    }
    weights
}

#[inline]
fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// The pixels in `window` of `src` resized to `out_width` x `out_height` by Pillow with `filter`.
///
/// `window` must lie inside `out_width` x `out_height`, and `src` must not be empty.
pub(crate) fn resize_window(
    src: &RgbImage,
    out_width: u32,
    out_height: u32,
    filter: Resample,
    window: Window,
) -> RgbImage {
    let (in_w, in_h) = src.dimensions();
    debug_assert!(in_w > 0 && in_h > 0);
    debug_assert!(window.x + window.width <= out_width && window.y + window.height <= out_height);
    if window.width == 0 || window.height == 0 {
        return RgbImage::new(window.width, window.height);
    }
    if (in_w, in_h) == (out_width, out_height) {
        // Image.resize to the same size returns a copy.
        return image::imageops::crop_imm(src, window.x, window.y, window.width, window.height).to_image();
    }
    match filter.kernel() {
        None => nearest_window(src, out_width, out_height, window),
        Some(kernel) => convolve_window(src, out_width, out_height, kernel, window),
    }
}

/// `ImagingScaleAffine` with `a = [in_w / out_w, 0, 0, 0, in_h / out_h, 0]`: source coordinates
/// advance by repeated `f64` addition from half a step, and are truncated.
fn nearest_window(src: &RgbImage, out_width: u32, out_height: u32, window: Window) -> RgbImage {
    let (in_w, in_h) = src.dimensions();
    let coords = |in_size: u32, out_size: u32, first: u32, count: u32| -> Vec<Option<u32>> {
        let a = f64::from(in_size as f32) / f64::from(out_size);
        let mut o = a * 0.5;
        let mut out = Vec::with_capacity(count as usize);
        for i in 0..first + count {
            if i >= first {
                // COORD(v): v < 0 ? -1 : (int)v; outside the input → left black (fill = 1).
                let c = if o < 0.0 { -1 } else { o as i64 };
                out.push((c >= 0 && c < i64::from(in_size)).then_some(c as u32));
            }
            o += a;
        }
        out
    };
    let xs = coords(in_w, out_width, window.x, window.width);
    let ys = coords(in_h, out_height, window.y, window.height);
    let mut out = RgbImage::new(window.width, window.height);
    for (oy, y) in ys.iter().enumerate() {
        let Some(y) = *y else { continue };
        for (ox, x) in xs.iter().enumerate() {
            if let Some(x) = *x {
                out.put_pixel(ox as u32, oy as u32, *src.get_pixel(x, y));
            }
        }
    }
    out
}

/// Whether Pillow runs the vertical pass first: since Pillow 13 (python-pillow/Pillow#9549),
/// when the height shrinks by more than twice as many pixels as the width does. Found by
/// comparing both orders against Pillow 13.0 on thousands of random sizes (no exceptions).
fn vertical_first(in_w: u32, in_h: u32, out_w: u32, out_h: u32) -> bool {
    out_h < in_h && i64::from(in_h) - i64::from(out_h) > 2 * (i64::from(in_w) - i64::from(out_w))
}

/// An 8-bit RGB buffer.
struct Plane {
    width: usize,
    height: usize,
    data: Vec<u8>,
}

/// Horizontal pass (`ImagingResampleHorizontal_8bpc`): rows `rows` of `src` (`src_width` pixels
/// wide, whose first column is input column `first_col`) → one output column per weight set.
fn horizontal(
    src: &[u8],
    src_width: usize,
    rows: std::ops::Range<usize>,
    first_col: usize,
    weights: &Weights,
) -> Plane {
    let out_w = weights.start.len();
    let height = rows.len();
    let mut data = vec![0u8; out_w * height * 3];
    let half = 1i32 << (PRECISION_BITS - 1);
    for (r, y) in rows.enumerate() {
        let line = &src[y * src_width * 3..(y + 1) * src_width * 3];
        let out = &mut data[r * out_w * 3..(r + 1) * out_w * 3];
        for xx in 0..out_w {
            let (xmin, k) = weights.of(xx);
            let x0 = xmin - first_col;
            let (mut s0, mut s1, mut s2) = (half, half, half);
            for (p, &kv) in line[x0 * 3..(x0 + k.len()) * 3].chunks_exact(3).zip(k) {
                s0 += i32::from(p[0]) * kv;
                s1 += i32::from(p[1]) * kv;
                s2 += i32::from(p[2]) * kv;
            }
            out[xx * 3] = clip8(s0);
            out[xx * 3 + 1] = clip8(s1);
            out[xx * 3 + 2] = clip8(s2);
        }
    }
    Plane { width: out_w, height, data }
}

/// Vertical pass (`ImagingResampleVertical_8bpc`): columns `cols` of `src` (`src_width` pixels
/// wide, whose first row is input row `first_row`) → one output row per weight set.
fn vertical(src: &[u8], src_width: usize, cols: std::ops::Range<usize>, first_row: usize, weights: &Weights) -> Plane {
    let out_h = weights.start.len();
    let width = cols.len();
    let mut data = vec![0u8; width * out_h * 3];
    let half = 1i32 << (PRECISION_BITS - 1);
    let stride = src_width * 3;
    for yy in 0..out_h {
        let (ymin, k) = weights.of(yy);
        let y0 = ymin - first_row;
        let out = &mut data[yy * width * 3..(yy + 1) * width * 3];
        for (c, o) in out.iter_mut().enumerate() {
            let col = cols.start * 3 + c;
            let mut s = half;
            for (y, &kv) in k.iter().enumerate() {
                s += i32::from(src[(y0 + y) * stride + col]) * kv;
            }
            *o = clip8(s);
        }
    }
    Plane { width, height: out_h, data }
}

fn convolve_window(src: &RgbImage, out_width: u32, out_height: u32, kernel: Kernel, window: Window) -> RgbImage {
    let (in_w, in_h) = src.dimensions();
    let raw: &[u8] = src.as_raw();
    let in_width = in_w as usize;
    let cols = window.x as usize..(window.x + window.width) as usize;
    let rows = window.y as usize..(window.y + window.height) as usize;
    let horiz = (out_width != in_w).then(|| precompute(in_w, out_width, kernel, window.x, window.width));
    let vert = (out_height != in_h).then(|| precompute(in_h, out_height, kernel, window.y, window.height));
    let plane = match (&horiz, &vert) {
        (Some(h), None) => horizontal(raw, in_width, rows, 0, h),
        (None, Some(v)) => vertical(raw, in_width, cols, 0, v),
        (Some(h), Some(v)) if vertical_first(in_w, in_h, out_width, out_height) => {
            let (first, last) = h.input_span();
            let temp = vertical(raw, in_width, first..last, 0, v);
            horizontal(&temp.data, temp.width, 0..temp.height, first, h)
        }
        (Some(h), Some(v)) => {
            let (first, last) = v.input_span();
            let temp = horizontal(raw, in_width, first..last, 0, h);
            vertical(&temp.data, temp.width, 0..temp.width, first, v)
        }
        (None, None) => unreachable!("same-size resizes are copies"),
    };
    debug_assert_eq!((plane.width, plane.height), (window.width as usize, window.height as usize));
    RgbImage::from_raw(window.width, window.height, plane.data).expect("window-sized buffer")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(w: u32, h: u32) -> Window {
        Window { x: 0, y: 0, width: w, height: h }
    }

    fn pattern(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let v = (x * 37 + y * 91 + (x * y) % 13) as u8;
            image::Rgb([v, v.wrapping_mul(3), if (x / 3 + y / 3) % 2 == 0 { 0 } else { 255 }])
        })
    }

    #[test]
    fn windows_equal_crops_of_the_full_resize() {
        let src = pattern(61, 43);
        for filter in [
            Resample::Nearest,
            Resample::Lanczos,
            Resample::Bilinear,
            Resample::Bicubic,
            Resample::Box,
            Resample::Hamming,
        ] {
            for (ow, oh) in [(20, 30), (61, 17), (90, 43), (150, 120)] {
                let all = resize_window(&src, ow, oh, filter, full(ow, oh));
                let win = Window { x: ow / 4, y: oh / 3, width: ow / 2, height: oh / 2 };
                let part = resize_window(&src, ow, oh, filter, win);
                let expected = image::imageops::crop_imm(&all, win.x, win.y, win.width, win.height).to_image();
                assert_eq!(part, expected, "{filter:?} {ow}x{oh}");
            }
        }
    }

    #[test]
    fn same_size_is_a_copy_and_constant_images_stay_constant() {
        let src = pattern(16, 9);
        assert_eq!(resize_window(&src, 16, 9, Resample::Bicubic, full(16, 9)), src);
        let flat = RgbImage::from_pixel(40, 25, image::Rgb([7, 200, 255]));
        for filter in [Resample::Lanczos, Resample::Bilinear, Resample::Bicubic, Resample::Hamming] {
            let out = resize_window(&flat, 13, 57, filter, full(13, 57));
            assert!(out.pixels().all(|p| p.0 == [7, 200, 255]), "{filter:?}");
        }
    }

    /// `pattern` of testdata/make_testdata.py.
    fn formula_image(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb(std::array::from_fn(|c| ((x * 73 + y * 151 + c as u32 * 47 + x * y * 13) % 256) as u8))
        })
    }

    #[test]
    fn matches_pillow_exactly() {
        #[derive(serde::Deserialize)]
        struct Case {
            src: [u32; 2],
            out: [u32; 2],
            filter: i64,
            pixels: Vec<u8>,
        }
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("server/src/media/testdata/pil_resize.json");
        let cases: Vec<Case> = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        assert!(cases.len() >= 15);
        for case in cases {
            let src = formula_image(case.src[0], case.src[1]);
            let filter = Resample::from_pil_code(case.filter).unwrap();
            let [w, h] = case.out;
            let ours = resize_window(&src, w, h, filter, full(w, h));
            assert_eq!(
                ours.as_raw(),
                &case.pixels,
                "{:?} -> {:?} with {filter:?} (vertical first: {})",
                case.src,
                case.out,
                vertical_first(case.src[0], case.src[1], w, h)
            );
        }
    }

    #[test]
    fn pass_order_rule() {
        // Pillow 13: vertical first iff the height shrinks by more than twice the width's shrink.
        assert!(vertical_first(5, 7, 3, 2));
        assert!(!vertical_first(37, 23, 3, 2));
        assert!(vertical_first(41, 40, 29, 14)); // 26 > 2 * 12
        assert!(vertical_first(41, 40, 29, 15)); // 25 > 24
        assert!(!vertical_first(41, 40, 29, 16)); // 24 is not > 24
        assert!(vertical_first(20, 9, 41, 3)); // wider and shorter
        assert!(!vertical_first(5, 7, 10, 10)); // both larger
    }

    #[test]
    fn pil_codes_round_trip() {
        for code in 0..6 {
            assert_eq!(i64::from(Resample::from_pil_code(code).unwrap().pil_code()), code);
        }
        assert_eq!(Resample::from_pil_code(6), None);
        assert_eq!(Resample::from_pil_code(-1), None);
    }
}
