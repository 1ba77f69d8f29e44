//! A checkpoint's `preprocessor_config.json` and the preprocessing it describes, equal to
//! transformers' PIL-backend image processors (`CLIPImageProcessorPil`,
//! `VideoMAEImageProcessorPil`, both `PilBackend._preprocess`):
//!
//! 1. **resize** with Pillow (`Image.resize`, see [`Resample`]) to the size `size` asks for;
//!    `{"shortest_edge": s}` scales the shorter side to `s` and the longer one to
//!    `int(s * long / short)` (truncated, `get_resize_output_image_size`);
//! 2. **centre crop** to `crop_size` on the 8-bit image (`image_transforms.center_crop`): top-left
//!    corner at `((h - ch) // 2, (w - cw) // 2)` with floor division, and an image smaller than the
//!    crop is padded with zeros (0 before rescaling, so `-mean / std` after normalising);
//! 3. **rescale**: `float32(float64(v) * rescale_factor)`;
//! 4. **normalise**: `(x - mean) / std` in `float32`, with mean and std rounded to `float32`.
//!
//! Each step is done with the same integer or floating-point operations as numpy/Pillow, so the
//! result is bit-identical to transformers' for the same RGB input.

use std::path::Path;

use image::RgbImage;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use super::resample::Resample;
use super::resample::{resize_window, weight_count, Window};
use crate::error::{GitcapError, Result};

/// `OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD` of transformers.
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];
/// `IMAGENET_STANDARD_MEAN` / `IMAGENET_STANDARD_STD` of transformers.
pub const IMAGENET_STANDARD_MEAN: [f64; 3] = [0.5, 0.5, 0.5];
pub const IMAGENET_STANDARD_STD: [f64; 3] = [0.5, 0.5, 0.5];

/// Upper bound on the pixels of one preprocessed image (only reachable without a centre crop).
const MAX_OUTPUT_PIXELS: u64 = 1 << 24;
/// Upper bound on resampling weights per axis (only reachable by squashing extreme aspect ratios).
const MAX_WEIGHTS: u64 = 1 << 24;

/// Which transformers image processor a config is for; it decides the defaults of missing keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProcessorKind {
    /// `CLIPImageProcessor` (GIT image checkpoints).
    Clip,
    /// `VideoMAEImageProcessor` (GIT video checkpoints).
    VideoMae,
    /// Any other `image_processor_type`, read with CLIP's defaults.
    Other(String),
}

/// The `size` of a config: what the resize step aims for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResizeTarget {
    /// `{"shortest_edge": s}`: the shorter side becomes `s`, the aspect ratio is kept.
    ShortestEdge(u32),
    /// `{"shortest_edge": s, "longest_edge": l}`: as above, unless the longer side would exceed
    /// `l` (`get_size_with_aspect_ratio`).
    ShortestLongestEdge { shortest_edge: u32, longest_edge: u32 },
    /// `{"height": h, "width": w}`: exactly that size.
    Exact { height: u32, width: u32 },
    /// `{"max_height": h, "max_width": w}`: the largest size that fits, aspect ratio kept.
    MaxHeightWidth { max_height: u32, max_width: u32 },
}

/// A checkpoint's image preprocessing, resolved: every key of `preprocessor_config.json` that
/// transformers' PIL backend reads, with the processor's defaults for missing ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawConfig", into = "RawConfig")]
pub struct PreprocessorConfig {
    pub kind: ProcessorKind,
    pub do_resize: bool,
    pub size: ResizeTarget,
    pub resample: Resample,
    pub do_center_crop: bool,
    /// `(height, width)`.
    pub crop_size: (u32, u32),
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
    /// Decoded media is always RGB already (see `decode`), so this changes nothing here.
    pub do_convert_rgb: bool,
}

/// Preprocessed pixels of one image: `3 × height × width` `f32`s, channel-major (CHW), RGB.
#[derive(Debug, Clone, PartialEq)]
pub struct PixelValues {
    pub data: Vec<f32>,
    pub height: usize,
    pub width: usize,
}

impl PreprocessorConfig {
    /// transformers' `CLIPImageProcessor` defaults: bicubic resize of the shortest edge to 224,
    /// 224x224 centre crop, OpenAI CLIP mean/std.
    pub fn clip() -> Self {
        Self {
            kind: ProcessorKind::Clip,
            do_resize: true,
            size: ResizeTarget::ShortestEdge(224),
            resample: Resample::Bicubic,
            do_center_crop: true,
            crop_size: (224, 224),
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: OPENAI_CLIP_MEAN,
            image_std: OPENAI_CLIP_STD,
            do_convert_rgb: true,
        }
    }

    /// transformers' `VideoMAEImageProcessor` defaults: bilinear resize of the shortest edge to
    /// 224, 224x224 centre crop, mean = std = 0.5.
    pub fn videomae() -> Self {
        Self {
            kind: ProcessorKind::VideoMae,
            resample: Resample::Bilinear,
            image_mean: IMAGENET_STANDARD_MEAN,
            image_std: IMAGENET_STANDARD_STD,
            // Not a VideoMAE key: transformers leaves it unset, i.e. no conversion.
            do_convert_rgb: false,
            ..Self::clip()
        }
    }

    /// Reads a checkpoint's `preprocessor_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| GitcapError::model_files(format!("cannot read {}: {e}", path.display())))?;
        Self::from_json(&text).map_err(|e| GitcapError::model_files(format!("{}: {e}", path.display())))
    }

    /// Parses the text of a `preprocessor_config.json`; the error says which key is wrong.
    pub fn from_json(text: &str) -> std::result::Result<Self, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// `(height, width)` of an image of `height` x `width` after the resize step.
    pub fn resized_size(&self, height: u32, width: u32) -> Result<(u32, u32)> {
        if !self.do_resize {
            return Ok((height, width));
        }
        let (h, w) = (u64::from(height), u64::from(width));
        let (oh, ow): (u64, u64) = match self.size {
            ResizeTarget::ShortestEdge(size) => {
                // get_resize_output_image_size(default_to_square=False): int(size * long / short).
                let (short, long) = if w <= h { (w, h) } else { (h, w) };
                let new_short = u64::from(size);
                let new_long = ((new_short * long) as f64 / short as f64) as u64;
                if w <= h {
                    (new_long, new_short)
                } else {
                    (new_short, new_long)
                }
            }
            ResizeTarget::ShortestLongestEdge { shortest_edge, longest_edge } => {
                size_with_aspect_ratio(h, w, shortest_edge, longest_edge)
            }
            ResizeTarget::Exact { height, width } => (u64::from(height), u64::from(width)),
            ResizeTarget::MaxHeightWidth { max_height, max_width } => {
                let scale = (f64::from(max_height) / h as f64).min(f64::from(max_width) / w as f64);
                ((h as f64 * scale) as u64, (w as f64 * scale) as u64)
            }
        };
        if oh == 0 || ow == 0 || oh > u64::from(u32::MAX) || ow > u64::from(u32::MAX) {
            return Err(GitcapError::media(
                "media",
                format!(
                    "a {width}x{height} image cannot be resized for this model: it would become \
                     {ow}x{oh}; its aspect ratio is too extreme"
                ),
            ));
        }
        Ok((oh as u32, ow as u32))
    }

    /// Resizes, crops, rescales and normalises one RGB image (`PilBackend._preprocess`).
    ///
    /// Fails only for images whose aspect ratio is so extreme that the result, or the resize
    /// weights, would not fit in memory (e.g. 1x40000000 without a centre crop).
    pub fn preprocess(&self, image: &RgbImage) -> Result<PixelValues> {
        let (in_w, in_h) = image.dimensions();
        if in_w == 0 || in_h == 0 {
            return Err(GitcapError::media("media", "image has no pixels"));
        }
        let (rh, rw) = self.resized_size(in_h, in_w)?;
        let (oh, ow) = if self.do_center_crop { self.crop_size } else { (rh, rw) };
        if u64::from(oh) * u64::from(ow) > MAX_OUTPUT_PIXELS {
            return Err(GitcapError::media(
                "media",
                format!(
                    "a {in_w}x{in_h} image would become {ow}x{oh} pixels for this model, more than \
                     {MAX_OUTPUT_PIXELS}; its aspect ratio is too extreme"
                ),
            ));
        }
        // The crop's top-left corner in the resized image (numpy floor division, may be < 0).
        let (top, left) = if self.do_center_crop {
            ((i64::from(rh) - i64::from(oh)).div_euclid(2), (i64::from(rw) - i64::from(ow)).div_euclid(2))
        } else {
            (0, 0)
        };
        // The part of the resized image inside the crop.
        let y0 = top.max(0);
        let y1 = (top + i64::from(oh)).min(i64::from(rh));
        let x0 = left.max(0);
        let x1 = (left + i64::from(ow)).min(i64::from(rw));
        let window =
            Window { x: x0 as u32, y: y0 as u32, width: (x1 - x0).max(0) as u32, height: (y1 - y0).max(0) as u32 };
        let resized = if (rh, rw) == (in_h, in_w) {
            image::imageops::crop_imm(image, window.x, window.y, window.width, window.height).to_image()
        } else {
            let weights = weight_count(in_w, rw, self.resample, window.width).max(weight_count(
                in_h,
                rh,
                self.resample,
                window.height,
            ));
            if weights > MAX_WEIGHTS {
                return Err(GitcapError::media(
                    "media",
                    format!(
                        "a {in_w}x{in_h} image cannot be resized to {rw}x{rh} for this model: its \
                         aspect ratio is too extreme"
                    ),
                ));
            }
            resize_window(image, rw, rh, self.resample, window)
        };

        // Rescale and normalise into CHW; pixels outside the resized image are the crop's zeros.
        let (oh, ow) = (oh as usize, ow as usize);
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, out) in table.iter_mut().enumerate() {
                *out = self.convert(c, v as u8);
            }
        }
        let mut data = vec![0f32; 3 * oh * ow];
        for (c, plane) in data.chunks_exact_mut(oh * ow).enumerate() {
            plane.fill(lut[c][0]);
        }
        let (dy, dx) = ((y0 - top) as usize, (x0 - left) as usize);
        for (y, row) in resized.rows().enumerate() {
            for (x, px) in row.enumerate() {
                let i = (y + dy) * ow + x + dx;
                for c in 0..3 {
                    data[c * oh * ow + i] = lut[c][px.0[c] as usize];
                }
            }
        }
        Ok(PixelValues { data, height: oh, width: ow })
    }

    /// One 8-bit value of channel `c` after rescale and normalise, with numpy's dtypes:
    /// `rescale` is `(v.astype(float64) * factor).astype(float32)`, `normalize` works in float32
    /// (`image.astype(float32)` first when there was no rescale).
    fn convert(&self, c: usize, v: u8) -> f32 {
        let x = if self.do_rescale { (f64::from(v) * self.rescale_factor) as f32 } else { f32::from(v) };
        if self.do_normalize {
            (x - self.image_mean[c] as f32) / self.image_std[c] as f32
        } else {
            x
        }
    }
}

/// `image_transforms.get_size_with_aspect_ratio((h, w), size, max_size)`, Python float semantics.
fn size_with_aspect_ratio(h: u64, w: u64, size: u32, max_size: u32) -> (u64, u64) {
    let mut size = u64::from(size);
    let max_size = max_size as f64;
    let min_orig = h.min(w) as f64;
    let max_orig = h.max(w) as f64;
    let mut raw_size = None;
    if max_orig / min_orig * size as f64 > max_size {
        let raw = max_size * min_orig / max_orig;
        raw_size = Some(raw);
        // Python's round(): half to even.
        size = raw.round_ties_even() as u64;
    }
    if (h <= w && h == size) || (w <= h && w == size) {
        (h, w)
    } else if w < h {
        let oh = match raw_size {
            Some(raw) => (raw * h as f64 / w as f64) as u64,
            None => ((size * h) as f64 / w as f64) as u64,
        };
        (oh, size)
    } else {
        let ow = match raw_size {
            Some(raw) => (raw * w as f64 / h as f64) as u64,
            None => ((size * w) as f64 / h as f64) as u64,
        };
        (size, ow)
    }
}

/// `preprocessor_config.json` as written: every key optional and type-checked in `try_from`,
/// so that errors name the key. Other keys (`processor_class`, ...) are ignored.
#[derive(Debug, Default, Serialize, Deserialize)]
struct RawConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    image_processor_type: Option<Value>,
    /// Older checkpoints name the class here instead (`CLIPFeatureExtractor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    feature_extractor_type: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    do_resize: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    default_to_square: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resample: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    do_center_crop: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crop_size: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    do_rescale: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rescale_factor: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    do_normalize: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    image_mean: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    image_std: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    do_convert_rgb: Option<Value>,
}

/// A key's value; `None` when it is absent or `null` (transformers then uses the default).
fn present(value: &Option<Value>) -> Option<&Value> {
    value.as_ref().filter(|v| !v.is_null())
}

fn flag(value: &Option<Value>, key: &str) -> std::result::Result<Option<bool>, String> {
    present(value).map(|v| v.as_bool().ok_or_else(|| format!("{key} must be true or false, got {v}"))).transpose()
}

fn text(value: &Option<Value>, key: &str) -> std::result::Result<Option<String>, String> {
    present(value)
        .map(|v| v.as_str().map(str::to_string).ok_or_else(|| format!("{key} must be a string, got {v}")))
        .transpose()
}

fn positive(value: &Value, what: &str) -> std::result::Result<u32, String> {
    value
        .as_u64()
        .filter(|&v| v > 0)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| format!("{what} must be a positive integer, got {value}"))
}

/// `get_size_dict` + the key sets `PilBackend.resize` accepts.
fn parse_size(value: &Value, default_to_square: bool) -> std::result::Result<ResizeTarget, String> {
    match value {
        Value::Number(_) if default_to_square => {
            let s = positive(value, "size")?;
            Ok(ResizeTarget::Exact { height: s, width: s })
        }
        Value::Number(_) => Ok(ResizeTarget::ShortestEdge(positive(value, "size")?)),
        Value::Array(items) if items.len() == 2 => {
            Ok(ResizeTarget::Exact { height: positive(&items[0], "size[0]")?, width: positive(&items[1], "size[1]")? })
        }
        Value::Array(items) if items.len() == 1 => parse_size(&items[0], default_to_square),
        Value::Object(map) => {
            let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
            keys.sort_unstable();
            let get = |k: &str| positive(&map[k], &format!("size.{k}"));
            match keys.as_slice() {
                ["shortest_edge"] => Ok(ResizeTarget::ShortestEdge(get("shortest_edge")?)),
                ["longest_edge", "shortest_edge"] => Ok(ResizeTarget::ShortestLongestEdge {
                    shortest_edge: get("shortest_edge")?,
                    longest_edge: get("longest_edge")?,
                }),
                ["height", "width"] => Ok(ResizeTarget::Exact { height: get("height")?, width: get("width")? }),
                ["max_height", "max_width"] => {
                    Ok(ResizeTarget::MaxHeightWidth { max_height: get("max_height")?, max_width: get("max_width")? })
                }
                _ => Err(format!(
                    "size {value} is not supported: expected {{\"shortest_edge\"}}, \
                     {{\"shortest_edge\", \"longest_edge\"}}, {{\"height\", \"width\"}} or \
                     {{\"max_height\", \"max_width\"}}"
                )),
            }
        }
        _ => Err(format!("size must be an integer, a list or an object, got {value}")),
    }
}

/// `get_size_dict(crop_size)` (an int is a square), then `center_crop`'s height and width.
fn parse_crop_size(value: &Value) -> std::result::Result<(u32, u32), String> {
    match value {
        Value::Number(_) => {
            let s = positive(value, "crop_size")?;
            Ok((s, s))
        }
        Value::Array(items) if items.len() == 2 => {
            Ok((positive(&items[0], "crop_size[0]")?, positive(&items[1], "crop_size[1]")?))
        }
        Value::Object(map) => match (map.get("height"), map.get("width")) {
            (Some(h), Some(w)) if map.len() == 2 => {
                Ok((positive(h, "crop_size.height")?, positive(w, "crop_size.width")?))
            }
            _ => Err(format!("crop_size must have keys height and width, got {value}")),
        },
        _ => Err(format!("crop_size must be an integer, a list or an object, got {value}")),
    }
}

fn parse_triple(value: &Value, what: &str) -> std::result::Result<[f64; 3], String> {
    let err = || format!("{what} must be a number or a list of 3 numbers, got {value}");
    match value {
        Value::Number(n) => Ok([n.as_f64().ok_or_else(err)?; 3]),
        Value::Array(items) if items.len() == 3 => {
            let mut out = [0.0; 3];
            for (o, item) in out.iter_mut().zip(items) {
                *o = item.as_f64().ok_or_else(err)?;
            }
            Ok(out)
        }
        _ => Err(err()),
    }
}

impl TryFrom<RawConfig> for PreprocessorConfig {
    type Error = String;

    fn try_from(raw: RawConfig) -> std::result::Result<Self, String> {
        let type_name = text(&raw.image_processor_type, "image_processor_type")?
            .or(text(&raw.feature_extractor_type, "feature_extractor_type")?)
            .unwrap_or_else(|| "CLIPImageProcessor".to_string());
        let base =
            type_name.trim_end_matches("Fast").trim_end_matches("Pil").replace("FeatureExtractor", "ImageProcessor");
        let mut cfg = match base.as_str() {
            "CLIPImageProcessor" => Self::clip(),
            "VideoMAEImageProcessor" => Self::videomae(),
            _ => Self { kind: ProcessorKind::Other(type_name), ..Self::clip() },
        };
        // Both processors set `default_to_square = False`.
        let default_to_square = flag(&raw.default_to_square, "default_to_square")?.unwrap_or(false);
        if let Some(v) = flag(&raw.do_resize, "do_resize")? {
            cfg.do_resize = v;
        }
        if let Some(size) = present(&raw.size) {
            cfg.size = parse_size(size, default_to_square)?;
        }
        if let Some(resample) = present(&raw.resample) {
            cfg.resample = resample
                .as_i64()
                .and_then(Resample::from_pil_code)
                .ok_or_else(|| format!("resample must be a PIL filter code 0..=5, got {resample}"))?;
        }
        if let Some(v) = flag(&raw.do_center_crop, "do_center_crop")? {
            cfg.do_center_crop = v;
        }
        if let Some(crop) = present(&raw.crop_size) {
            cfg.crop_size = parse_crop_size(crop)?;
        }
        if let Some(v) = flag(&raw.do_rescale, "do_rescale")? {
            cfg.do_rescale = v;
        }
        if let Some(v) = present(&raw.rescale_factor) {
            cfg.rescale_factor = v
                .as_f64()
                .filter(|f| f.is_finite())
                .ok_or_else(|| format!("rescale_factor must be a number, got {v}"))?;
        }
        if let Some(v) = flag(&raw.do_normalize, "do_normalize")? {
            cfg.do_normalize = v;
        }
        if let Some(mean) = present(&raw.image_mean) {
            cfg.image_mean = parse_triple(mean, "image_mean")?;
        }
        if let Some(std) = present(&raw.image_std) {
            cfg.image_std = parse_triple(std, "image_std")?;
        }
        if let Some(v) = flag(&raw.do_convert_rgb, "do_convert_rgb")? {
            cfg.do_convert_rgb = v;
        }
        if cfg.do_normalize && cfg.image_std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
            return Err(format!("image_std must be finite and non-zero, got {:?}", cfg.image_std));
        }
        Ok(cfg)
    }
}

impl From<PreprocessorConfig> for RawConfig {
    fn from(cfg: PreprocessorConfig) -> Self {
        let size = match cfg.size {
            ResizeTarget::ShortestEdge(s) => serde_json::json!({ "shortest_edge": s }),
            ResizeTarget::ShortestLongestEdge { shortest_edge, longest_edge } => {
                serde_json::json!({ "shortest_edge": shortest_edge, "longest_edge": longest_edge })
            }
            ResizeTarget::Exact { height, width } => serde_json::json!({ "height": height, "width": width }),
            ResizeTarget::MaxHeightWidth { max_height, max_width } => {
                serde_json::json!({ "max_height": max_height, "max_width": max_width })
            }
        };
        let type_name = match cfg.kind {
            ProcessorKind::Clip => "CLIPImageProcessor".to_string(),
            ProcessorKind::VideoMae => "VideoMAEImageProcessor".to_string(),
            ProcessorKind::Other(name) => name,
        };
        RawConfig {
            image_processor_type: Some(type_name.into()),
            feature_extractor_type: None,
            do_resize: Some(cfg.do_resize.into()),
            size: Some(size),
            default_to_square: None,
            resample: Some(cfg.resample.pil_code().into()),
            do_center_crop: Some(cfg.do_center_crop.into()),
            crop_size: Some(serde_json::json!({ "height": cfg.crop_size.0, "width": cfg.crop_size.1 })),
            do_rescale: Some(cfg.do_rescale.into()),
            rescale_factor: Some(cfg.rescale_factor.into()),
            do_normalize: Some(cfg.do_normalize.into()),
            image_mean: Some(cfg.image_mean.to_vec().into()),
            image_std: Some(cfg.image_std.to_vec().into()),
            do_convert_rgb: Some(cfg.do_convert_rgb.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_size(size: ResizeTarget) -> PreprocessorConfig {
        PreprocessorConfig { size, ..PreprocessorConfig::clip() }
    }

    #[test]
    fn resize_sizes_match_transformers() {
        // (height, width, target) -> (height, width), from transformers 5.24's
        // get_resize_output_image_size / get_size_with_aspect_ratio /
        // get_image_size_for_max_height_width.
        let se = |h, w, s| with_size(ResizeTarget::ShortestEdge(s)).resized_size(h, w).unwrap();
        assert_eq!(se(60, 80, 32), (32, 42));
        assert_eq!(se(64, 48, 32), (42, 32));
        assert_eq!(se(33, 100, 224), (224, 678));
        assert_eq!(se(1, 1000, 224), (224, 224_000));
        assert_eq!(se(224, 300, 224), (224, 300));
        assert_eq!(se(7, 3, 5), (11, 5));
        assert_eq!(se(640, 480, 224), (298, 224));
        assert_eq!(se(3, 3, 224), (224, 224));
        let sl = |h, w, s, l| {
            with_size(ResizeTarget::ShortestLongestEdge { shortest_edge: s, longest_edge: l })
                .resized_size(h, w)
                .unwrap()
        };
        assert_eq!(sl(60, 80, 32, 40), (30, 40));
        assert_eq!(sl(100, 33, 20, 50), (50, 16));
        assert_eq!(sl(1000, 10, 30, 100), (100, 1));
        assert_eq!(sl(50, 50, 30, 100), (30, 30));
        assert_eq!(sl(300, 1000, 224, 448), (134, 448));
        assert_eq!(sl(33, 100, 10, 25), (8, 25));
        let mhw = |h, w, mh, mw| {
            with_size(ResizeTarget::MaxHeightWidth { max_height: mh, max_width: mw }).resized_size(h, w).unwrap()
        };
        assert_eq!(mhw(100, 200, 50, 50), (25, 50));
        assert_eq!(mhw(100, 200, 200, 500), (200, 400));
        assert_eq!(mhw(33, 77, 20, 20), (8, 19));
        let exact = with_size(ResizeTarget::Exact { height: 5, width: 9 });
        assert_eq!(exact.resized_size(100, 3).unwrap(), (5, 9));
        let off = PreprocessorConfig { do_resize: false, ..PreprocessorConfig::clip() };
        assert_eq!(off.resized_size(13, 17).unwrap(), (13, 17));
        // A size that rounds to zero is an error, not a panic.
        assert!(mhw_err(1, 1000, 10, 10));
    }

    fn mhw_err(h: u32, w: u32, mh: u32, mw: u32) -> bool {
        with_size(ResizeTarget::MaxHeightWidth { max_height: mh, max_width: mw }).resized_size(h, w).is_err()
    }

    #[test]
    fn crop_pads_a_small_image_with_zeros_like_numpy() {
        // CLIPImageProcessorPil(do_resize=False, crop_size={"height": 8, "width": 4}) on a 7x5
        // image with values arange(3*5*7) % 250 + 1 (CHW): the crop keeps columns 1..5 and puts
        // the 5 rows at rows 2..7 of 8, zeros elsewhere. Channel 0, column 0, from transformers:
        let expected_col0 = [
            -1.792_262_6f32,
            -1.792_262_6,
            -1.763_065_7,
            -1.660_876_6,
            -1.558_687_7,
            -1.456_498_7,
            -1.354_309_8,
            -1.792_262_6,
        ];
        let img = RgbImage::from_fn(7, 5, |x, y| {
            image::Rgb(std::array::from_fn(|c| ((c as u32 * 35 + y * 7 + x) % 250 + 1) as u8))
        });
        let cfg = PreprocessorConfig { do_resize: false, crop_size: (8, 4), ..PreprocessorConfig::clip() };
        let px = cfg.preprocess(&img).unwrap();
        assert_eq!((px.height, px.width, px.data.len()), (8, 4, 3 * 8 * 4));
        let col0: Vec<f32> = (0..8).map(|y| px.data[y * 4]).collect();
        assert_eq!(col0, expected_col0);
        // Row 0 is padding in every channel: -mean / std.
        for c in 0..3 {
            let pad = (0.0 - OPENAI_CLIP_MEAN[c] as f32) / OPENAI_CLIP_STD[c] as f32;
            assert!(px.data[c * 32..c * 32 + 4].iter().all(|&v| v == pad));
        }
    }

    #[test]
    fn rescale_and_normalize_follow_numpy_dtypes() {
        let img = RgbImage::from_fn(2, 1, |x, _| image::Rgb([x as u8 * 255, 128, 7]));
        let mut cfg = PreprocessorConfig { do_resize: false, do_center_crop: false, ..PreprocessorConfig::videomae() };
        let px = cfg.preprocess(&img).unwrap();
        assert_eq!(px.data, vec![-1.0, 1.0, 0.003_921_628, 0.003_921_628, -0.945_098_04, -0.945_098_04]);
        cfg.do_normalize = false;
        cfg.do_rescale = false;
        assert_eq!(cfg.preprocess(&img).unwrap().data, vec![0.0, 255.0, 128.0, 128.0, 7.0, 7.0]);
    }

    #[test]
    fn extreme_aspect_ratios_are_errors_not_allocations() {
        let tall = RgbImage::new(1, 5000);
        // CLIP with a centre crop: fine, the 224 x 1120000 resize is only computed where cropped.
        let px = PreprocessorConfig::clip().preprocess(&tall).unwrap();
        assert_eq!((px.height, px.width), (224, 224));
        // Without the crop the result would be 224 x 1120000 pixels.
        let no_crop = PreprocessorConfig { do_center_crop: false, ..PreprocessorConfig::clip() };
        assert!(no_crop.preprocess(&tall).is_err());
        // Squashing 1 x 5000000 into 224 x 224 would need 224 x 20 million weights.
        let squash = with_size(ResizeTarget::Exact { height: 224, width: 224 });
        assert!(squash.preprocess(&RgbImage::new(5_000_000, 1)).is_err());
        assert!(PreprocessorConfig::clip().preprocess(&RgbImage::new(0, 3)).is_err());
    }

    #[test]
    fn reads_configs_with_the_processors_defaults() {
        let clip = PreprocessorConfig::from_json(
            r#"{"crop_size": {"height": 32, "width": 32}, "do_center_crop": true,
                "do_convert_rgb": true, "do_normalize": true, "do_rescale": true, "do_resize": true,
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_processor_type": "CLIPImageProcessor",
                "image_std": [0.26862954, 0.26130258, 0.27577711],
                "processor_class": "GitProcessor", "resample": 3,
                "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 32}}"#,
        )
        .unwrap();
        assert_eq!(clip.kind, ProcessorKind::Clip);
        assert_eq!(clip.size, ResizeTarget::ShortestEdge(32));
        assert_eq!(clip.crop_size, (32, 32));
        assert_eq!(clip.resample, Resample::Bicubic);
        assert_eq!(clip.rescale_factor, 1.0 / 255.0);

        assert_eq!(PreprocessorConfig::from_json("{}").unwrap(), PreprocessorConfig::clip());
        let video = PreprocessorConfig::from_json(r#"{"image_processor_type": "VideoMAEImageProcessor"}"#).unwrap();
        assert_eq!(video, PreprocessorConfig::videomae());
        assert_eq!(video.resample, Resample::Bilinear);
        assert_eq!(video.image_std, [0.5; 3]);

        // Older checkpoints: feature_extractor_type, integer sizes, null meaning "default".
        let old = PreprocessorConfig::from_json(
            r#"{"feature_extractor_type": "CLIPFeatureExtractor", "size": 224, "crop_size": 224,
                "resample": null, "image_mean": 0.5}"#,
        )
        .unwrap();
        assert_eq!(old.kind, ProcessorKind::Clip);
        assert_eq!(old.size, ResizeTarget::ShortestEdge(224));
        assert_eq!(old.crop_size, (224, 224));
        assert_eq!(old.resample, Resample::Bicubic);
        assert_eq!(old.image_mean, [0.5; 3]);
        let square = PreprocessorConfig::from_json(r#"{"size": 100, "default_to_square": true}"#).unwrap();
        assert_eq!(square.size, ResizeTarget::Exact { height: 100, width: 100 });
        let fast = PreprocessorConfig::from_json(
            r#"{"image_processor_type": "VideoMAEImageProcessorFast", "size": [10, 20]}"#,
        )
        .unwrap();
        assert_eq!(fast.kind, ProcessorKind::VideoMae);
        assert_eq!(fast.size, ResizeTarget::Exact { height: 10, width: 20 });
        let other = PreprocessorConfig::from_json(r#"{"image_processor_type": "SiglipImageProcessor"}"#).unwrap();
        assert_eq!(other.kind, ProcessorKind::Other("SiglipImageProcessor".into()));
        assert_eq!(other.image_mean, OPENAI_CLIP_MEAN);

        // Round trip through serde.
        let json = serde_json::to_string(&old).unwrap();
        assert_eq!(PreprocessorConfig::from_json(&json).unwrap(), old);
    }

    #[test]
    fn bad_configs_say_which_key_is_wrong() {
        let err = |json: &str| PreprocessorConfig::from_json(json).unwrap_err();
        assert!(err(r#"{"size": {"longest_edge": 5}}"#).contains("size"));
        assert!(err(r#"{"size": {"shortest_edge": 0}}"#).contains("size.shortest_edge"));
        assert!(err(r#"{"resample": 7}"#).contains("resample"));
        assert!(err(r#"{"crop_size": {"height": 3}}"#).contains("crop_size"));
        assert!(err(r#"{"image_std": [1, 2]}"#).contains("image_std"));
        assert!(err(r#"{"image_std": [1, 0, 1]}"#).contains("image_std"));
        assert!(err(r#"{"do_resize": "yes"}"#).contains("do_resize"));
        let missing = PreprocessorConfig::from_file(Path::new("/nonexistent/preprocessor_config.json"));
        assert!(matches!(missing, Err(GitcapError::ModelFiles(_))));
    }
}
