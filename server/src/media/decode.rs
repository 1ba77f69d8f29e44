//! Decoding request media into 8-bit RGB images, as `transformers.image_utils.load_image` does.
//!
//! `load_image` (what transformers' pipelines do with a path, URL or base64 string) is
//! `PIL.Image.open` → `ImageOps.exif_transpose` → `.convert("RGB")`. Matching it means:
//!
//! - **EXIF orientation** is applied (orientations 2–8; from the EXIF block of JPEG, PNG `eXIf`
//!   and WebP, or else from an XMP `tiff:Orientation`, as Pillow's `getexif` does).
//! - **Alpha is dropped, not composited**: `convert("RGB")` keeps the stored colour of every pixel,
//!   even fully transparent ones. (Handing an RGBA `PIL.Image` straight to an image processor
//!   would instead composite it over white in `convert_to_rgb`; that is not what happens to
//!   encoded bytes.)
//! - **Grayscale** is replicated into R, G and B; 1/2/4-bit images are expanded to 0–255.
//! - **16-bit** RGB(A) and gray+alpha PNGs keep the high byte (`v >> 8`), as Pillow does. A 16-bit
//!   gray PNG without alpha is the one exception: Pillow opens it as mode `I;16` and its
//!   conversion to RGB *clamps* values to 255 (so nearly every pixel turns white); here it keeps
//!   the high byte like the other 16-bit images instead.
//! - **Animated GIF and WebP**: every frame, composed onto the full logical screen (what
//!   `Image.seek(k)` then `load_image` gives for frame `k` of a GIF without transparency).
//! - **JPEG** pixels come from libjpeg-turbo (through the `mozjpeg` crate, whose decoder is
//!   libjpeg-turbo's), the library Pillow decodes with, at its defaults, so they are Pillow's
//!   exactly; the `image` crate's decoder (zune-jpeg) differs by up to ±7 levels on 4:2:0 photos.
//!   CMYK JPEGs, which libjpeg does not convert to RGB, fall back to the `image` crate.
//! - **Truncated data** is an error, as in Pillow ("image file is truncated"); for JPEG this means
//!   the data must reach the end-of-image marker.
//!
//! Decompression bombs: an image's declared size is checked against [`MediaLimits::max_pixels`]
//! from its header, before any pixel buffer is allocated. A GIF's frames are read from their own
//! headers first ([`gif_layout`]): a frame may declare itself far larger than the logical screen,
//! and the decoder allocates what the frame declares, so every frame's own size counts, in the
//! pixel limit and in the media budget ([`decode_footprint`]). Animations are also limited in
//! frame count and in pixels summed over all frames, all before the first frame is decoded, and
//! decoding stops between frames once the request is gone ([`CancelFlag`]).

use std::io::Cursor;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use image::codecs::gif::GifDecoder;
use image::codecs::jpeg::JpegDecoder;
use image::codecs::png::PngDecoder;
use image::codecs::webp::WebPDecoder;
use image::metadata::Orientation;
use image::{AnimationDecoder, DynamicImage, ImageDecoder, ImageError, RgbImage};

use gitcap_protocol::media_kind::{is_heif_image, sniff_image, sniff_video, ImageFormat};

use crate::error::{GitcapError, Result};
use crate::media::budget::decode_cost;

/// Bounds on what one piece of media may decode to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaLimits {
    /// The most pixels an image may have (width × height), checked against the size its header
    /// declares before decoding; for an animation, also the most pixels of all its frames together.
    pub max_pixels: u64,
    /// The most frames an animated image may have.
    pub max_frames: usize,
}

impl Default for MediaLimits {
    /// As config/default.toml's `limits`: 40 megapixels (about 120 MB decoded), 64 frames.
    fn default() -> Self {
        Self { max_pixels: 40_000_000, max_frames: 64 }
    }
}

/// Set once the request a decode works for has ended (its deadline passed, or its caller left):
/// decoding runs off the async threads, so it cannot be dropped with the request's future, and
/// instead checks this between frames and gives up. Clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// A guard that cancels this flag when dropped: held by the request's future, so that
    /// dropping the future (a deadline, a disconnect) stops the decode it started.
    pub fn cancel_on_drop(&self) -> CancelOnDrop {
        CancelOnDrop(self.clone())
    }
}

/// Cancels its [`CancelFlag`] when dropped.
#[derive(Debug)]
pub struct CancelOnDrop(CancelFlag);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Says what unsupported bytes look like, for the error message.
fn describe_unknown(bytes: &[u8]) -> String {
    let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let names = gitcap_protocol::media_kind::image_names();
    let mut msg = format!("not an image gitcap reads ({names}; first bytes {})", head.join(" "));
    let what = if is_heif_image(bytes) {
        Some("a HEIC/HEIF or AVIF image".to_string())
    } else if let Some(container) = sniff_video(bytes) {
        Some(format!("a {} video: send it as media.video", container.name()))
    } else if let Ok(format) = image::guess_format(bytes) {
        Some(format!("a {format:?} image"))
    } else if bytes.starts_with(b"data:") || bytes.starts_with(b"/9j/") || bytes.starts_with(b"iVBOR") {
        Some("base64 text; send the decoded bytes".into())
    } else if bytes.starts_with(b"http://") || bytes.starts_with(b"https://") {
        Some("a URL; send the image bytes".into())
    } else {
        None
    };
    if let Some(what) = what {
        msg.push_str(&format!(": this looks like {what}"));
    }
    msg
}

fn too_large(field: &str, width: u32, height: u32, limits: &MediaLimits) -> GitcapError {
    GitcapError::media(
        field,
        format!(
            "image is {width}x{height} = {} megapixels, above the {} megapixel limit",
            megapixels(u64::from(width) * u64::from(height)),
            megapixels(limits.max_pixels)
        ),
    )
}

fn megapixels(pixels: u64) -> String {
    let mp = pixels as f64 / 1e6;
    if mp >= 10.0 || mp == mp.round() {
        format!("{mp:.0}")
    } else {
        format!("{mp:.1}")
    }
}

fn check_size(field: &str, width: u32, height: u32, limits: &MediaLimits) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(GitcapError::media(field, format!("image is {width}x{height}: it has no pixels")));
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(too_large(field, width, height, limits));
    }
    Ok(())
}

fn decode_error(field: &str, format: ImageFormat, err: ImageError) -> GitcapError {
    let detail = match &err {
        ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the data ends early (truncated file?)".to_string()
        }
        ImageError::Limits(_) => "it needs more memory than allowed".to_string(),
        _ => err.to_string(),
    };
    GitcapError::media(field, format!("cannot decode the {} image: {detail}", format.name()))
}

/// Decodes an encoded image (JPEG, PNG, WebP or GIF, recognised by content) into RGB frames:
/// one for a still image, one per frame for an animated GIF or WebP.
///
/// `field` names the request field in error messages (e.g. `media.image`). See the module
/// documentation for how the result matches transformers' `load_image`.
pub fn decode_image(bytes: &[u8], field: &str, limits: &MediaLimits) -> Result<Vec<RgbImage>> {
    let mut frames = Vec::new();
    decode_image_each(bytes, field, limits, &CancelFlag::new(), &mut |frame| {
        frames.push(frame);
        Ok(())
    })?;
    Ok(frames)
}

/// The size an image's header declares, without decoding it: `(width, height, animated)`;
/// `None` when the bytes are not an image this module decodes (decoding then says why). For an
/// animation, the logical screen.
pub fn declared_size(bytes: &[u8]) -> Option<(u32, u32, bool)> {
    match sniff_image(bytes)? {
        ImageFormat::Jpeg => JpegDecoder::new(Cursor::new(bytes)).ok().map(|d| with_still(d.dimensions())),
        ImageFormat::Png => PngDecoder::new(Cursor::new(bytes)).ok().map(|d| with_still(d.dimensions())),
        ImageFormat::Gif => GifDecoder::new(Cursor::new(bytes)).ok().map(|d| {
            let (w, h) = d.dimensions();
            (w, h, true)
        }),
        ImageFormat::WebP => WebPDecoder::new(Cursor::new(bytes)).ok().map(|d| {
            let (w, h) = d.dimensions();
            (w, h, d.has_animation())
        }),
    }
}

fn with_still((w, h): (u32, u32)) -> (u32, u32, bool) {
    (w, h, false)
}

/// What decoding `bytes` holds at its peak, in bytes, from its headers alone (for the media
/// budget): [`decode_cost`] of its declared size (for an animation, which counts a frame of the
/// screen's size), and for a GIF whose largest frame is larger than its screen, the excess: the
/// decoder allocates each frame at its own size (RGBA and its index buffer: 8 bytes a pixel,
/// rounded up). 0 when decoding will refuse the image before allocating anything (over the
/// limits, or not an image), so that it gets that error, not the budget's.
pub fn decode_footprint(bytes: &[u8], limits: &MediaLimits) -> u64 {
    let within = |w: u32, h: u32| u64::from(w) * u64::from(h) <= limits.max_pixels;
    if sniff_image(bytes) == Some(ImageFormat::Gif) {
        let Some(layout) = gif_layout(bytes, limits.max_frames) else { return 0 };
        if check_gif_layout("", &layout, limits).is_err() {
            return 0;
        }
        let (w, h) = layout.screen;
        let largest = layout.frames.iter().map(|&(w, h)| u64::from(w) * u64::from(h)).max().unwrap_or(0);
        let beyond_screen = largest.saturating_sub(u64::from(w) * u64::from(h));
        return decode_cost(w, h, true).saturating_add(beyond_screen.saturating_mul(8));
    }
    declared_size(bytes).filter(|&(w, h, _)| within(w, h)).map_or(0, |(w, h, animated)| decode_cost(w, h, animated))
}

/// What a GIF's headers declare: its logical screen and each frame's own size.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GifLayout {
    screen: (u32, u32),
    frames: Vec<(u32, u32)>,
}

/// Reads a GIF's block structure without decoding any pixel: the logical screen, then each
/// extension and image is stepped over by its data sub-blocks' lengths (GIF89a, sections 18–27).
/// Stops at the trailer, at a block it cannot read whole (decoding then says what is wrong), or
/// once it has seen more than `max_frames` frames. A frame whose descriptor is whole counts even
/// when its data is cut short: the decoder allocates it from the descriptor alone.
fn gif_layout(b: &[u8], max_frames: usize) -> Option<GifLayout> {
    let u16_at = |i: usize| b.get(i..i + 2).map(|x| u32::from(u16::from_le_bytes([x[0], x[1]])));
    let colour_table = |flags: u8| if flags & 0x80 != 0 { 3usize << ((flags & 7) + 1) } else { 0 };
    // Past a run of data sub-blocks (a length byte, then that many bytes) and its terminator.
    let past_sub_blocks = |mut i: usize| -> Option<usize> {
        loop {
            let len = usize::from(*b.get(i)?);
            i += 1 + len;
            if len == 0 {
                return Some(i);
            }
        }
    };
    if !b.starts_with(b"GIF") {
        return None;
    }
    let screen = (u16_at(6)?, u16_at(8)?);
    let mut i = 13 + colour_table(*b.get(10)?);
    let mut frames = Vec::new();
    while frames.len() <= max_frames {
        let next = match b.get(i) {
            // Extension: introducer, label, sub-blocks.
            Some(0x21) => past_sub_blocks(i + 2),
            // Image: descriptor (position, size, flags), local colour table, LZW code size, data.
            Some(0x2C) => {
                let (Some(w), Some(h), Some(&flags)) = (u16_at(i + 5), u16_at(i + 7), b.get(i + 9)) else { break };
                frames.push((w, h));
                past_sub_blocks(i + 10 + colour_table(flags) + 1)
            }
            // The trailer, the end of the data, or a block the decoder refuses.
            _ => None,
        };
        match next {
            Some(next) => i = next,
            None => break,
        }
    }
    Some(GifLayout { screen, frames })
}

/// The limits on what a GIF will decode to, from its layout: the screen and every frame within
/// the pixel limit, at most `max_frames` frames, and at most `max_pixels` decoded over all
/// frames, each counting its own size or the screen's (what it is composed onto), the larger.
fn check_gif_layout(field: &str, layout: &GifLayout, limits: &MediaLimits) -> Result<()> {
    let (sw, sh) = layout.screen;
    check_size(field, sw, sh, limits)?;
    if layout.frames.len() > limits.max_frames {
        return Err(GitcapError::media(
            field,
            format!("animated GIF has more than {} frames, the limit", limits.max_frames),
        ));
    }
    let screen = u64::from(sw) * u64::from(sh);
    let mut total = 0u64;
    for (k, &(w, h)) in layout.frames.iter().enumerate() {
        let pixels = u64::from(w) * u64::from(h);
        if pixels > limits.max_pixels {
            return Err(GitcapError::media(
                field,
                format!(
                    "frame {k} of the GIF is {w}x{h} = {} megapixels (its screen is {sw}x{sh}), above the {} \
                     megapixel limit",
                    megapixels(pixels),
                    megapixels(limits.max_pixels)
                ),
            ));
        }
        total += pixels.max(screen);
        if total > limits.max_pixels {
            return Err(GitcapError::media(
                field,
                format!(
                    "animated GIF decodes to at least {} megapixels in its first {} frames (each frame its own \
                     size or the {sw}x{sh} screen's, the larger), above the {} megapixel limit",
                    megapixels(total),
                    k + 1,
                    megapixels(limits.max_pixels)
                ),
            ));
        }
    }
    Ok(())
}

/// [`decode_image`], handing each frame to `on_frame` as soon as it is decoded, so that an
/// animation's frames need not all be held at full size; an animation stops with
/// [`GitcapError::Cancelled`] between frames once `cancel` is set. Returns the number of frames.
pub fn decode_image_each(
    bytes: &[u8],
    field: &str,
    limits: &MediaLimits,
    cancel: &CancelFlag,
    on_frame: &mut dyn FnMut(RgbImage) -> Result<()>,
) -> Result<usize> {
    let one = |image: RgbImage, on_frame: &mut dyn FnMut(RgbImage) -> Result<()>| on_frame(image).map(|()| 1);
    if bytes.is_empty() {
        return Err(GitcapError::media(field, "empty: no image bytes were sent"));
    }
    let format = sniff_image(bytes).ok_or_else(|| GitcapError::media(field, describe_unknown(bytes)))?;
    match format {
        ImageFormat::Jpeg => {
            check_jpeg_structure(bytes).map_err(|m| GitcapError::media(field, m))?;
            // The image crate reads the header and metadata; libjpeg-turbo (the decoder inside
            // Pillow) decodes the pixels, so they are Pillow's exactly.
            let mut header = JpegDecoder::new(Cursor::new(bytes)).map_err(|e| decode_error(field, format, e))?;
            let (w, h) = header.dimensions();
            check_size(field, w, h, limits)?;
            let orientation = orientation(&mut header);
            match decode_jpeg_with_libjpeg(bytes) {
                Ok(image) => {
                    let mut image = DynamicImage::ImageRgb8(image);
                    image.apply_orientation(orientation);
                    one(image.into_rgb8(), on_frame)
                }
                Err(JpegProblem::Unsupported(what)) => {
                    tracing::debug!(field, "JPEG uses {what}; decoding it with the image crate");
                    one(decode_still(header, format, field, limits)?, on_frame)
                }
                Err(JpegProblem::Corrupt(message)) => Err(GitcapError::media(field, message)),
            }
        }
        ImageFormat::Png => {
            check_png_palette(bytes).map_err(|m| GitcapError::media(field, m))?;
            let decoder = PngDecoder::new(Cursor::new(bytes)).map_err(|e| decode_error(field, format, e))?;
            one(decode_still(decoder, format, field, limits)?, on_frame)
        }
        ImageFormat::WebP => {
            let mut decoder = WebPDecoder::new(Cursor::new(bytes)).map_err(|e| decode_error(field, format, e))?;
            if decoder.has_animation() {
                let (w, h) = decoder.dimensions();
                check_size(field, w, h, limits)?;
                decoder.set_limits(decoder_limits(limits)).map_err(|e| decode_error(field, format, e))?;
                decode_frames(decoder.into_frames(), (w, h), format, field, limits, cancel, on_frame)
            } else {
                one(decode_still(decoder, format, field, limits)?, on_frame)
            }
        }
        ImageFormat::Gif => {
            // Each frame declares its own size, which may exceed the logical screen: the decoder
            // allocates it before reading any pixel, so every frame is checked first.
            if let Some(layout) = gif_layout(bytes, limits.max_frames) {
                check_gif_layout(field, &layout, limits)?;
            }
            let mut decoder = GifDecoder::new(Cursor::new(bytes)).map_err(|e| decode_error(field, format, e))?;
            let (w, h) = decoder.dimensions();
            check_size(field, w, h, limits)?;
            // A backstop, should the decoder read a frame the layout did not.
            decoder.set_limits(decoder_limits(limits)).map_err(|e| decode_error(field, format, e))?;
            decode_frames(decoder.into_frames(), (w, h), format, field, limits, cancel, on_frame)
        }
    }
}

enum JpegProblem {
    /// A colour space libjpeg does not convert to RGB (CMYK, YCCK).
    Unsupported(String),
    Corrupt(String),
}

/// Decodes with libjpeg-turbo's defaults (accurate integer IDCT, fancy upsampling), as Pillow does.
///
/// The `mozjpeg` crate reports libjpeg's fatal errors (invalid progressive parameters, bad
/// Huffman tables, ...) by unwinding with the message as payload, and leaves catching it to the
/// caller; here it becomes [`JpegProblem::Corrupt`]. Any other panic is a bug and goes on.
fn decode_jpeg_with_libjpeg(bytes: &[u8]) -> std::result::Result<RgbImage, JpegProblem> {
    std::panic::catch_unwind(|| decode_jpeg_unwinding(bytes)).unwrap_or_else(|payload| {
        match payload.downcast::<String>() {
            Ok(message) => Err(JpegProblem::Corrupt(format!("cannot decode the JPEG image: {message}"))),
            Err(payload) => std::panic::resume_unwind(payload),
        }
    })
}

fn decode_jpeg_unwinding(bytes: &[u8]) -> std::result::Result<RgbImage, JpegProblem> {
    let corrupt = |e: std::io::Error| JpegProblem::Corrupt(format!("cannot decode the JPEG image: {e}"));
    let decompress = mozjpeg::Decompress::new_mem(bytes).map_err(corrupt)?;
    let space = decompress.color_space();
    if matches!(space, mozjpeg::ColorSpace::JCS_CMYK | mozjpeg::ColorSpace::JCS_YCCK) {
        return Err(JpegProblem::Unsupported(format!("the {space:?} colour space")));
    }
    let mut rgb = decompress.rgb().map_err(corrupt)?;
    let (width, height) = (rgb.width() as u32, rgb.height() as u32);
    let pixels: Vec<[u8; 3]> = rgb.read_scanlines().map_err(corrupt)?;
    rgb.finish().map_err(corrupt)?;
    RgbImage::from_raw(width, height, pixels.concat())
        .ok_or_else(|| JpegProblem::Corrupt("the JPEG image ended before its last row".into()))
}

/// Uncompressed 8-bit RGB pixels (row-major, `width * height * 3` bytes) as an image.
pub fn from_raw_rgb(width: u32, height: u32, bytes: &[u8], field: &str, limits: &MediaLimits) -> Result<RgbImage> {
    check_size(field, width, height, limits)?;
    let expected = u64::from(width) * u64::from(height) * 3;
    if bytes.len() as u64 != expected {
        return Err(GitcapError::media(
            field,
            format!(
                "raw RGB data is {} bytes, but {width}x{height} pixels need {expected} \
                 (width * height * 3, 8-bit R, G, B per pixel, row by row)",
                bytes.len()
            ),
        ));
    }
    Ok(RgbImage::from_raw(width, height, bytes.to_vec()).expect("length checked"))
}

fn decode_still(
    mut decoder: impl ImageDecoder,
    format: ImageFormat,
    field: &str,
    limits: &MediaLimits,
) -> Result<RgbImage> {
    let (w, h) = decoder.dimensions();
    check_size(field, w, h, limits)?;
    decoder.set_limits(decoder_limits(limits)).map_err(|e| decode_error(field, format, e))?;
    let orientation = orientation(&mut decoder);
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| decode_error(field, format, e))?;
    image.apply_orientation(orientation);
    Ok(to_rgb_like_pil(image))
}

/// A backstop for decoders' own allocations: an image of `max_pixels` at 16 bits per channel
/// with alpha, twice over.
fn decoder_limits(limits: &MediaLimits) -> image::Limits {
    let mut image_limits = image::Limits::default();
    image_limits.max_alloc = Some(limits.max_pixels.saturating_mul(16).max(1 << 20));
    image_limits
}

fn decode_frames(
    mut frames: image::Frames<'_>,
    (w, h): (u32, u32),
    format: ImageFormat,
    field: &str,
    limits: &MediaLimits,
    cancel: &CancelFlag,
    on_frame: &mut dyn FnMut(RgbImage) -> Result<()>,
) -> Result<usize> {
    let frame_pixels = u64::from(w) * u64::from(h);
    let mut count = 0usize;
    loop {
        if cancel.is_cancelled() {
            return Err(GitcapError::Cancelled);
        }
        let Some(frame) = frames.next() else { break };
        let frame = frame.map_err(|e| decode_error(field, format, e))?;
        if count == limits.max_frames {
            return Err(GitcapError::media(
                field,
                format!("animated {} has more than {} frames, the limit", format.name(), limits.max_frames),
            ));
        }
        let total = frame_pixels * (count as u64 + 1);
        if total > limits.max_pixels {
            return Err(GitcapError::media(
                field,
                format!(
                    "animated {} has at least {} frames of {w}x{h} = {} megapixels in all, above \
                     the {} megapixel limit",
                    format.name(),
                    count + 1,
                    megapixels(total),
                    megapixels(limits.max_pixels)
                ),
            ));
        }
        on_frame(drop_alpha(&frame.into_buffer()))?;
        count += 1;
    }
    if count == 0 {
        return Err(GitcapError::media(field, format!("cannot decode the {} image: it has no frames", format.name())));
    }
    Ok(count)
}

fn drop_alpha(rgba: &image::RgbaImage) -> RgbImage {
    let (w, h) = rgba.dimensions();
    let data = rgba.as_raw().chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
    RgbImage::from_raw(w, h, data).expect("same size")
}

/// `PIL.Image.convert("RGB")` of what Pillow would have opened (see the module documentation).
fn to_rgb_like_pil(image: DynamicImage) -> RgbImage {
    fn map<const N: usize, T: Copy>(w: u32, h: u32, raw: &[T], f: impl Fn(&[T]) -> [u8; 3]) -> RgbImage {
        let data = raw.chunks_exact(N).flat_map(f).collect();
        RgbImage::from_raw(w, h, data).expect("same size")
    }
    let hi = |v: u16| (v >> 8) as u8;
    let (w, h) = (image.width(), image.height());
    match image {
        DynamicImage::ImageRgb8(img) => img,
        DynamicImage::ImageRgba8(img) => drop_alpha(&img),
        DynamicImage::ImageLuma8(img) => map::<1, u8>(w, h, img.as_raw(), |p| [p[0]; 3]),
        DynamicImage::ImageLumaA8(img) => map::<2, u8>(w, h, img.as_raw(), |p| [p[0]; 3]),
        DynamicImage::ImageRgb16(img) => map::<3, u16>(w, h, img.as_raw(), |p| [hi(p[0]), hi(p[1]), hi(p[2])]),
        DynamicImage::ImageRgba16(img) => map::<4, u16>(w, h, img.as_raw(), |p| [hi(p[0]), hi(p[1]), hi(p[2])]),
        DynamicImage::ImageLuma16(img) => map::<1, u16>(w, h, img.as_raw(), |p| [hi(p[0]); 3]),
        DynamicImage::ImageLumaA16(img) => map::<2, u16>(w, h, img.as_raw(), |p| [hi(p[0]); 3]),
        other => other.to_rgb8(),
    }
}

/// The orientation Pillow's `exif_transpose` would apply: the EXIF Orientation tag, else an XMP
/// `tiff:Orientation`; values other than 2..=8 (and unreadable metadata) mean none.
fn orientation(decoder: &mut impl ImageDecoder) -> Orientation {
    let from_exif = decoder.exif_metadata().ok().flatten().and_then(|exif| {
        let tiff = exif.strip_prefix(b"Exif\0\0").unwrap_or(&exif);
        exif_orientation_tag(tiff)
    });
    let tag = from_exif.or_else(|| decoder.xmp_metadata().ok().flatten().and_then(|xmp| xmp_orientation_tag(&xmp)));
    orientation_from_tag(tag)
}

fn orientation_from_tag(tag: Option<u16>) -> Orientation {
    tag.and_then(|t| u8::try_from(t).ok()).and_then(Orientation::from_exif).unwrap_or(Orientation::NoTransforms)
}

/// The raw value of tag 0x0112 in IFD0 of a TIFF-structured EXIF block.
fn exif_orientation_tag(tiff: &[u8]) -> Option<u16> {
    let big = match tiff.get(..4)? {
        [0x49, 0x49, 42, 0] => false,
        [0x4d, 0x4d, 0, 42] => true,
        _ => return None,
    };
    let u16_at = |o: usize| -> Option<u16> {
        let b: [u8; 2] = tiff.get(o..o + 2)?.try_into().ok()?;
        Some(if big { u16::from_be_bytes(b) } else { u16::from_le_bytes(b) })
    };
    let u32_at = |o: usize| -> Option<u32> {
        let b: [u8; 4] = tiff.get(o..o + 4)?.try_into().ok()?;
        Some(if big { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) })
    };
    let ifd = u32_at(4)? as usize;
    let count = u16_at(ifd)? as usize;
    (0..count).find_map(|i| {
        let entry = ifd.checked_add(2 + 12 * i)?;
        if u16_at(entry)? != 0x0112 {
            return None;
        }
        // One value, stored in the entry: SHORT (3) as Orientation should be, or LONG (4).
        match u16_at(entry + 2)? {
            3 => u16_at(entry + 8),
            4 => u16::try_from(u32_at(entry + 8)?).ok(),
            _ => None,
        }
    })
}

/// Pillow's `re.search(r'tiff:Orientation(="|>)([0-9])', xmp)`.
fn xmp_orientation_tag(xmp: &[u8]) -> Option<u16> {
    const KEY: &[u8] = b"tiff:Orientation";
    let mut rest = xmp;
    while let Some(pos) = rest.windows(KEY.len()).position(|w| w == KEY) {
        let after = &rest[pos + KEY.len()..];
        let digit = match after {
            [b'=', b'"', d, ..] | [b'>', d, ..] => Some(*d),
            _ => None,
        };
        if let Some(d) = digit.filter(u8::is_ascii_digit) {
            return Some(u16::from(d - b'0'));
        }
        rest = &rest[pos + 1..];
    }
    None
}

/// Refuses a PLTE chunk that is not a whole number of RGB entries, which the PNG specification
/// forbids and which makes the png crate (0.18.1) panic when it expands the palette. Only chunk
/// headers are read; everything else is left to the decoder.
fn check_png_palette(b: &[u8]) -> std::result::Result<(), String> {
    let mut i = 8; // after the signature
    while let Some(header) = b.get(i..i + 8) {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if &header[4..8] == b"PLTE" && !len.is_multiple_of(3) {
            return Err(format!(
                "cannot decode the PNG image: its palette (PLTE) is {len} bytes, not a whole number of \
                 3-byte RGB entries"
            ));
        }
        // Length, type, data, CRC.
        i = i.saturating_add(12).saturating_add(len);
    }
    Ok(())
}

/// Walks a JPEG's marker segments up to the end-of-image marker, so a truncated file is an error
/// (as in Pillow) rather than an image with a grey or smeared bottom. Stray bytes between
/// segments are skipped, as libjpeg does.
fn check_jpeg_structure(b: &[u8]) -> std::result::Result<(), String> {
    const TRUNCATED: &str = "JPEG data is truncated: it ends before the end-of-image marker (incomplete upload?)";
    let mut i = 2; // after SOI
    loop {
        // Next marker: skip anything up to a 0xFF, then fill bytes.
        while i < b.len() && b[i] != 0xFF {
            i += 1;
        }
        while i < b.len() && b[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = b.get(i) else {
            return Err(TRUNCATED.into());
        };
        i += 1;
        match marker {
            0xD9 => return Ok(()),
            // Standalone markers: SOI, TEM, RSTn; 0x00 is a stuffed byte outside a scan.
            0xD8 | 0x01 | 0xD0..=0xD7 | 0x00 => continue,
            _ => {}
        }
        let len = match b.get(i..i + 2) {
            Some(&[hi, lo]) => usize::from(u16::from_be_bytes([hi, lo])),
            _ => return Err(TRUNCATED.into()),
        };
        if len < 2 {
            return Err(format!("cannot decode the JPEG image: bad segment length {len} at byte {i}"));
        }
        i += len;
        if i > b.len() {
            return Err(TRUNCATED.into());
        }
        if marker == 0xDA {
            // Entropy-coded data: runs until a 0xFF that is not followed by a stuffed 0x00 or RSTn.
            loop {
                match b[i..].iter().position(|&x| x == 0xFF) {
                    None => return Err(TRUNCATED.into()),
                    Some(p) => {
                        let j = i + p;
                        match b.get(j + 1) {
                            None => return Err(TRUNCATED.into()),
                            Some(0x00) | Some(0xD0..=0xD7) => i = j + 2,
                            Some(0xFF) => i = j + 1,
                            Some(_) => {
                                i = j;
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> MediaLimits {
        MediaLimits::default()
    }

    fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let mut crc_input = kind.to_vec();
        crc_input.extend_from_slice(data);
        out.extend_from_slice(&crc32(&crc_input).to_be_bytes());
        out
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }

    /// A stored (uncompressed) zlib stream.
    fn zlib_stored(data: &[u8]) -> Vec<u8> {
        let mut out = vec![0x78, 0x01];
        let chunks: Vec<&[u8]> = data.chunks(65535).collect();
        for (i, c) in chunks.iter().enumerate() {
            out.push(u8::from(i + 1 == chunks.len()));
            out.extend_from_slice(&(c.len() as u16).to_le_bytes());
            out.extend_from_slice(&(!(c.len() as u16)).to_le_bytes());
            out.extend_from_slice(c);
        }
        let (mut a, mut b) = (1u32, 0u32);
        for &x in data {
            a = (a + u32::from(x)) % 65521;
            b = (b + a) % 65521;
        }
        out.extend_from_slice(&((b << 16) | a).to_be_bytes());
        out
    }

    /// A PNG (8-bit, no interlace) of the given colour type, with optional extra chunks before IDAT.
    fn png(width: u32, height: u32, color_type: u8, rows: &[Vec<u8>], extra: &[Vec<u8>]) -> Vec<u8> {
        let mut ihdr = width.to_be_bytes().to_vec();
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, color_type, 0, 0, 0]);
        let mut raw = Vec::new();
        for row in rows {
            raw.push(0);
            raw.extend_from_slice(row);
        }
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        out.extend(png_chunk(b"IHDR", &ihdr));
        for chunk in extra {
            out.extend_from_slice(chunk);
        }
        out.extend(png_chunk(b"IDAT", &zlib_stored(&raw)));
        out.extend(png_chunk(b"IEND", &[]));
        out
    }

    fn message(err: GitcapError) -> String {
        match err {
            GitcapError::Media { field, message } => format!("{field}: {message}"),
            other => panic!("expected a media error, got {other:?}"),
        }
    }

    #[test]
    fn rejects_empty_and_unknown_bytes() {
        let m = message(decode_image(&[], "media.image", &limits()).unwrap_err());
        assert!(m.starts_with("media.image: empty"), "{m}");
        let m = message(decode_image(b"<html><body>", "media.image", &limits()).unwrap_err());
        assert!(m.contains("not an image gitcap reads (JPEG, PNG, WebP, GIF; first bytes 3c 68 74 6d"), "{m}");
        let m = message(decode_image(b"BM\x36\0\0\0\0\0\0\0\x36\0\0\0(", "f", &limits()).unwrap_err());
        assert!(m.contains("looks like a Bmp image"), "{m}");
        let m = message(decode_image(b"iVBORw0KGgoAAAANSUhEUg", "f", &limits()).unwrap_err());
        assert!(m.contains("base64"), "{m}");
        // Random bytes, and random bytes behind each format's magic: errors, never panics.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        };
        for magic in [&b""[..], b"\xFF\xD8\xFF", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\0\0\0\0WEBP"] {
            for len in [0usize, 1, 7, 64, 1000] {
                let mut bytes = magic.to_vec();
                bytes.extend((0..len).map(|_| next()));
                if !bytes.is_empty() {
                    assert!(decode_image(&bytes, "f", &limits()).is_err());
                }
            }
        }
    }

    #[test]
    fn rejects_a_declared_giant_png_before_decoding() {
        // IHDR says 100000 x 100000 (10 gigapixels); the data is a handful of bytes.
        let bytes = png(100_000, 100_000, 2, &[vec![0; 3]], &[]);
        let m = message(decode_image(&bytes, "media.image", &limits()).unwrap_err());
        assert!(m.contains("image is 100000x100000 = 10000 megapixels, above the 40 megapixel limit"), "{m}");
        let tight = MediaLimits { max_pixels: 11, max_frames: 4 };
        let m = message(decode_image(&png(4, 3, 0, &vec![vec![0; 4]; 3], &[]), "f", &tight).unwrap_err());
        assert!(m.contains("image is 4x3 = 0.0 megapixels"), "{m}");
    }

    #[test]
    fn rejects_zero_sized_images() {
        let bytes = png(0, 5, 2, &[], &[]);
        assert!(decode_image(&bytes, "f", &limits()).is_err());
        let m = message(from_raw_rgb(0, 5, &[], "media.raw", &limits()).unwrap_err());
        assert!(m.contains("0x5: it has no pixels"), "{m}");
    }

    #[test]
    fn raw_rgb_length_is_checked() {
        let img = from_raw_rgb(2, 3, &(0..18).collect::<Vec<u8>>(), "media.raw", &limits()).unwrap();
        assert_eq!(img.dimensions(), (2, 3));
        assert_eq!(img.get_pixel(1, 2).0, [15, 16, 17]);
        let m = message(from_raw_rgb(2, 3, &[0; 17], "media.raw", &limits()).unwrap_err());
        assert!(m.contains("raw RGB data is 17 bytes, but 2x3 pixels need 18"), "{m}");
        let m = message(from_raw_rgb(100_000, 100_000, &[], "media.raw", &limits()).unwrap_err());
        assert!(m.contains("above the 40 megapixel limit"), "{m}");
    }

    #[test]
    fn png_color_types_convert_like_pillow() {
        // Gray, gray+alpha, RGBA (alpha dropped, colour under alpha 0 kept).
        let gray = decode_image(&png(2, 1, 0, &[vec![10, 250]], &[]), "f", &limits()).unwrap();
        assert_eq!(gray[0].as_raw(), &vec![10, 10, 10, 250, 250, 250]);
        let la = decode_image(&png(2, 1, 4, &[vec![10, 0, 250, 128]], &[]), "f", &limits()).unwrap();
        assert_eq!(la[0].as_raw(), &vec![10, 10, 10, 250, 250, 250]);
        let rgba = png(2, 1, 6, &[vec![255, 0, 255, 0, 1, 2, 3, 255]], &[]);
        let rgba = decode_image(&rgba, "f", &limits()).unwrap();
        assert_eq!(rgba[0].as_raw(), &vec![255, 0, 255, 1, 2, 3]);
    }

    /// Pillow's `Image.transpose` for EXIF orientation `o`, on a `w`x`h` image: where output pixel
    /// (x, y) comes from, and the output size.
    fn pil_exif_transpose(o: u16, w: u32, h: u32, x: u32, y: u32) -> (u32, u32) {
        match o {
            2 => (w - 1 - x, y),         // FLIP_LEFT_RIGHT
            3 => (w - 1 - x, h - 1 - y), // ROTATE_180
            4 => (x, h - 1 - y),         // FLIP_TOP_BOTTOM
            5 => (y, x),                 // TRANSPOSE
            6 => (y, h - 1 - x),         // ROTATE_270 (counter-clockwise) = 90 clockwise
            7 => (w - 1 - y, h - 1 - x), // TRANSVERSE
            8 => (w - 1 - y, x),         // ROTATE_90 (counter-clockwise)
            _ => (x, y),
        }
    }

    #[test]
    fn exif_and_xmp_orientation_in_png() {
        let (w, h) = (3u32, 2u32);
        let rows: Vec<Vec<u8>> = (0..h).map(|y| (0..w).flat_map(|x| [(10 * x + y) as u8, 0, 0]).collect()).collect();
        for o in 0u16..=9 {
            for via_xmp in [false, true] {
                let chunk = if via_xmp {
                    let xmp = format!(
                        "XML:com.adobe.xmp\0\0\0\0\0<x:xmpmeta><rdf:Description tiff:Orientation=\"{o}\"/></x:xmpmeta>"
                    );
                    png_chunk(b"iTXt", xmp.as_bytes())
                } else {
                    // Little-endian TIFF: IFD0 at 8 with one entry, tag 0x0112 SHORT x1 = o.
                    let mut tiff = b"II\x2a\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00".to_vec();
                    tiff.extend_from_slice(&o.to_le_bytes());
                    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
                    png_chunk(b"eXIf", &tiff)
                };
                let img = decode_image(&png(w, h, 2, &rows, &[chunk]), "f", &limits()).unwrap();
                let img = &img[0];
                let (ow, oh) = if (5..=8).contains(&o) { (h, w) } else { (w, h) };
                assert_eq!(img.dimensions(), (ow, oh), "orientation {o} xmp={via_xmp}");
                for y in 0..oh {
                    for x in 0..ow {
                        let (sx, sy) = pil_exif_transpose(o, w, h, x, y);
                        assert_eq!(
                            img.get_pixel(x, y).0[0],
                            (10 * sx + sy) as u8,
                            "orientation {o} xmp={via_xmp} at ({x},{y})"
                        );
                    }
                }
            }
        }
    }

    /// Found by the `decode_image` fuzz target: a progressive JPEG whose scan parameters libjpeg
    /// rejects (a fatal error, which the mozjpeg crate raises as an unwind) panicked through
    /// `decode_image` instead of returning an error.
    #[test]
    fn libjpeg_fatal_errors_are_media_errors() {
        let bytes = [
            0xFF, 0xD8, 0xFF, 0xC2, 0x00, 0x0B, 0x08, 0x00, 0x0E, 0x00, 0x09, 0x01, 0x01, 0x11, 0x00, 0xFF, 0xDA, 0x00,
            0x08, 0x01, 0x01, 0x3F, 0x10, 0x39, 0xDA, 0xFF, 0xD9,
        ];
        let m = message(decode_image(&bytes, "media.image", &limits()).unwrap_err());
        assert!(m.starts_with("media.image: cannot decode the JPEG image: libjpeg fatal error: "), "{m}");
    }

    /// Found by the `decode_image` fuzz target: a GIF whose logical screen is tiny but whose
    /// frame declares 30000x30000 pixels made the decoder allocate 3.6 GB for that frame before
    /// reading any pixel (only the logical screen was checked against the limits).
    #[test]
    fn a_gif_frame_larger_than_its_screen_is_bounded() {
        let mut bytes = b"GIF89a\x04\x00\x04\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff".to_vec();
        // Image descriptor at (0, 0), 30000 x 30000, then a little LZW data and the trailer.
        bytes.extend_from_slice(b"\x2c\x00\x00\x00\x00\x30\x75\x30\x75\x00\x02\x02\x4c\x01\x00\x3b");
        let m = message(decode_image(&bytes, "media.image", &limits()).unwrap_err());
        assert_eq!(
            m,
            "media.image: frame 0 of the GIF is 30000x30000 = 900 megapixels (its screen is 4x4), above the 40 \
             megapixel limit"
        );
        assert_eq!(decode_footprint(&bytes, &limits()), 0, "refused by the limits: needs no room");
    }

    /// A GIF with a 2-colour global table, a looping extension, then each frame at (0, 0) in its
    /// own size, behind a graphic control extension, every pixel colour 0.
    fn gif(screen: (u16, u16), frames: &[(u16, u16)]) -> Vec<u8> {
        let mut out = b"GIF89a".to_vec();
        out.extend(screen.0.to_le_bytes());
        out.extend(screen.1.to_le_bytes());
        out.extend([0x80, 0, 0, 0, 0, 0, 255, 255, 255]);
        out.extend(b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00");
        for &(w, h) in frames {
            out.extend(b"\x21\xf9\x04\x00\x00\x00\x00\x00\x2c\x00\x00\x00\x00");
            out.extend(w.to_le_bytes());
            out.extend(h.to_le_bytes());
            out.extend([0, 2]);
            let pixels = vec![0u8; usize::from(w) * usize::from(h)];
            let data = weezl::encode::Encoder::new(weezl::BitOrder::Lsb, 2).encode(&pixels).unwrap();
            for block in data.chunks(255) {
                out.push(block.len() as u8);
                out.extend(block);
            }
            out.push(0);
        }
        out.push(0x3b);
        out
    }

    #[test]
    fn gif_layout_reads_every_frame_header() {
        let bytes = gif((4, 3), &[(4, 3), (9, 2), (1, 1)]);
        let layout = gif_layout(&bytes, 512).unwrap();
        assert_eq!(layout, GifLayout { screen: (4, 3), frames: vec![(4, 3), (9, 2), (1, 1)] });
        assert_eq!(gif_layout(&bytes, 1).unwrap().frames.len(), 2, "stops counting past the frame limit");
        // Cut inside the last frame's data: its descriptor still counts.
        let cut = gif_layout(&bytes[..bytes.len() - 4], 512).unwrap();
        assert_eq!(cut.frames.len(), 3);
        assert_eq!(decode_image(&bytes, "f", &limits()).unwrap().len(), 3);
    }

    #[test]
    fn gif_frames_count_their_own_size_towards_the_pixel_limit() {
        let tight = MediaLimits { max_pixels: 100, max_frames: 10 };
        assert_eq!(decode_image(&gif((4, 4), &[(4, 4), (4, 4)]), "f", &tight).unwrap().len(), 2);
        // Two 8x8 frames on a 4x4 screen decode 128 pixels, not 32.
        let bytes = gif((4, 4), &[(8, 8), (8, 8)]);
        let m = message(decode_image(&bytes, "media.image", &tight).unwrap_err());
        assert!(m.contains("decodes to at least 0.0 megapixels in its first 2 frames"), "{m}");
        assert_eq!(decode_footprint(&bytes, &tight), 0);
        // Small frames count the screen they are composed onto.
        let m = message(decode_image(&gif((7, 7), &[(1, 1), (1, 1), (1, 1)]), "f", &tight).unwrap_err());
        assert!(m.contains("in its first 3 frames"), "{m}");
    }

    #[test]
    fn too_many_gif_frames_are_refused_before_decoding() {
        let tight = MediaLimits { max_pixels: 1000, max_frames: 10 };
        let bytes = gif((1, 1), &[(1, 1); 11]);
        let m = message(decode_image(&bytes, "media.image", &tight).unwrap_err());
        assert_eq!(m, "media.image: animated GIF has more than 10 frames, the limit");
        assert_eq!(decode_image(&gif((1, 1), &[(1, 1); 10]), "f", &tight).unwrap().len(), 10);
    }

    #[test]
    fn the_footprint_of_a_gif_counts_its_largest_frame() {
        let bytes = gif((4, 4), &[(2, 2), (100, 50)]);
        assert_eq!(decode_footprint(&bytes, &limits()), decode_cost(4, 4, true) + (100 * 50 - 16) * 8);
        let within = gif((40, 30), &[(40, 30), (10, 10)]);
        assert_eq!(decode_footprint(&within, &limits()), decode_cost(40, 30, true), "frames within the screen");
        let still = png(30, 20, 2, &vec![vec![0; 90]; 20], &[]);
        assert_eq!(decode_footprint(&still, &limits()), decode_cost(30, 20, false));
        assert_eq!(decode_footprint(b"not an image", &limits()), 0);
    }

    #[test]
    fn a_cancelled_decode_stops_between_frames() {
        let bytes = gif((2, 2), &[(2, 2); 5]);
        let cancel = CancelFlag::new();
        let mut seen = 0;
        let result = decode_image_each(&bytes, "f", &limits(), &cancel, &mut |_| {
            seen += 1;
            cancel.cancel();
            Ok(())
        });
        assert!(matches!(result, Err(GitcapError::Cancelled)), "{result:?}");
        assert_eq!(seen, 1);
        let gone = CancelFlag::new();
        drop(gone.cancel_on_drop());
        assert!(gone.is_cancelled());
    }

    /// Found by the `decode_image` fuzz target: the png crate (0.18.1) panics expanding a
    /// palette whose PLTE chunk is not a whole number of RGB entries.
    #[test]
    fn a_png_palette_of_partial_entries_is_an_error() {
        for len in [7, 8, 766] {
            let palette = png_chunk(b"PLTE", &vec![9; len]);
            let bytes = png(2, 1, 3, &[vec![0, 1]], &[palette]);
            let m = message(decode_image(&bytes, "media.image", &limits()).unwrap_err());
            assert!(m.contains(&format!("its palette (PLTE) is {len} bytes")), "{m}");
        }
        let whole = png(2, 1, 3, &[vec![0, 1]], &[png_chunk(b"PLTE", &[1, 2, 3, 4, 5, 6])]);
        assert_eq!(decode_image(&whole, "f", &limits()).unwrap()[0].as_raw(), &vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn jpeg_structure_check() {
        // SOI, a comment, SOS with stuffed bytes and a restart marker, EOI.
        let mut ok = vec![0xFF, 0xD8, 0xFF, 0xFE, 0x00, 0x04, b'h', b'i', 0xFF, 0xDA, 0x00, 0x02];
        ok.extend_from_slice(&[1, 2, 0xFF, 0x00, 3, 0xFF, 0xD0, 4, 0xFF, 0xFF, 0xD9]);
        assert_eq!(check_jpeg_structure(&ok), Ok(()));
        for cut in 1..ok.len() - 2 {
            assert!(check_jpeg_structure(&ok[..ok.len() - cut]).is_err(), "cut {cut}");
        }
        let mut trailing = ok.clone();
        trailing.extend_from_slice(b"trailing garbage");
        assert_eq!(check_jpeg_structure(&trailing), Ok(()));
    }
}
