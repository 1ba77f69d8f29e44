//! Media: request bytes → RGB images → the model's `pixel_values`, bit-identical to what Hugging
//! Face transformers (5.24, Pillow 13.0) computes with `load_image` and its PIL-backend image
//! processors.
//!
//! - [`decode_image`] / [`from_raw_rgb`]: JPEG, PNG, WebP and GIF (every frame of an animation),
//!   EXIF orientation applied, converted to RGB as `transformers.image_utils.load_image` does
//!   (alpha dropped, not composited); sizes checked against [`MediaLimits`] before decoding. JPEG
//!   pixels come from libjpeg-turbo, Pillow's own decoder, because the `image` crate's decoder
//!   rounds differently.
//! - [`PreprocessorConfig`]: a checkpoint's `preprocessor_config.json`;
//!   [`PreprocessorConfig::preprocess`] resizes (`resample`: Pillow's resampling, ported bit for
//!   bit), centre crops, rescales and normalises into CHW `f32` [`PixelValues`].
//! - [`sample_frame_indices`]: which frames of a longer video the model sees.
//! - [`fetch`]: media named by an http(s) URL, fetched under a [`UrlPolicy`] that keeps requests
//!   away from private networks (SSRF).
//! - [`video`]: video files → RGB frames at chosen timestamps, decoded by the `ffmpeg` program in
//!   isolated, bounded child processes ([`VideoDecoder`]).
//! - [`spool`]: the server's own directory for those files while they are decoded, and the
//!   removal of what killed servers left.
//!
//! Turning [`PixelValues`] into tensors is the model's business. Reference data for the
//! unit tests: `tests/fixtures/golden` and `testdata/` (see `testdata/make_testdata.py`).

pub mod budget;
mod decode;
pub mod fetch;
mod frames;
mod preprocess;
mod resample;
pub mod spool;
pub mod video;

pub use budget::{decode_cost, MediaBudget};
pub use decode::{
    declared_size, decode_footprint, decode_image, decode_image_each, from_raw_rgb, CancelFlag, CancelOnDrop,
    MediaLimits,
};
pub use fetch::{Fetched, FetchedBytes, UrlFetcher, UrlPolicy};
pub use frames::sample_frame_indices;
pub use preprocess::{
    PixelValues, PreprocessorConfig, ProcessorKind, Resample, ResizeTarget, IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
};
pub use video::{sample_timestamps, sniff_container, Sampling, TimedFrame, VideoDecoder, VideoInfo, VideoLimits};

#[cfg(test)]
mod golden_tests;
