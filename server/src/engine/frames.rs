//! A request's frames as the model's thread takes them: preprocessed pixels, or the vision
//! tower's output for a frame encoded ahead (uploads, live and dense captioning).

use std::sync::Arc;

use image::RgbImage;
use tch::Tensor;

use super::feature_cache::ContentKey;
use crate::error::Result;
use crate::media::{PixelValues, PreprocessorConfig};

/// One frame of a request.
pub enum Frame {
    Pixels(PreparedFrame),
    Encoded(EncodedFrame),
}

impl Frame {
    /// The same frame, sharing its pixels or features (requests that see the same frames).
    pub fn share(&self) -> Frame {
        match self {
            Frame::Pixels(p) => Frame::Pixels(p.share()),
            Frame::Encoded(e) => Frame::Encoded(e.clone()),
        }
    }

    /// A decoded image as the model's input (see [`PreparedFrame::new`]).
    pub fn from_image(image: &RgbImage, preprocessor: &PreprocessorConfig) -> Result<Self> {
        Ok(Frame::Pixels(PreparedFrame::new(image, preprocessor)?))
    }

    /// The content key of the frame's pixels.
    pub fn key(&self) -> ContentKey {
        match self {
            Frame::Pixels(p) => p.key,
            Frame::Encoded(e) => e.key,
        }
    }
}

/// A frame ready for the vision tower: the image processor's output [3, H, W] (f32) and the
/// content key of those pixels. Made off the model thread, as soon as a frame is decoded, so
/// that only the model's input size is kept, not the decoded image.
///
/// The pixels stay plain memory until the model's thread makes them a tensor
/// ([`Self::tensor`]): creating a tensor runs libtorch's parallel fill, and a thread that runs
/// one keeps an OpenMP team, which slows down the model's thread (see [`super::ModelWorker::load`]).
pub struct PreparedFrame {
    pub key: ContentKey,
    pixels: Arc<PixelValues>,
}

impl PreparedFrame {
    /// Resizes, crops and normalises `image` as the checkpoint's image processor does.
    pub fn new(image: &RgbImage, preprocessor: &PreprocessorConfig) -> Result<Self> {
        Ok(Self::from_pixel_values(preprocessor.preprocess(image)?))
    }

    /// Pixels already preprocessed (CHW).
    pub fn from_pixel_values(pixels: PixelValues) -> Self {
        Self { key: ContentKey::of_pixels(&pixels), pixels: Arc::new(pixels) }
    }

    /// The same frame, sharing its pixels.
    pub fn share(&self) -> Self {
        Self { key: self.key, pixels: self.pixels.clone() }
    }

    /// Bytes of pixels held.
    pub fn bytes(&self) -> usize {
        self.pixels.data.len() * std::mem::size_of::<f32>()
    }

    /// Whether both hold the same pixels (not a copy).
    pub fn shares_pixels_with(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.pixels, &other.pixels)
    }

    /// The pixels as a [3, H, W] f32 CPU tensor (on the model's thread).
    pub fn tensor(&self) -> Tensor {
        let (height, width) = (self.pixels.height as i64, self.pixels.width as i64);
        Tensor::from_slice(&self.pixels.data).view([3, height, width])
    }

    /// A [3, H, W] f32 tensor of preprocessed pixels (golden inputs, benchmarks).
    pub fn from_tensor(pixels: &Tensor) -> Result<Self> {
        let size = pixels.size();
        let data: Vec<f32> = Vec::try_from(pixels.to_kind(tch::Kind::Float).contiguous().view([-1]))
            .map_err(|e| crate::error::GitcapError::Internal(format!("reading pixels: {e}")))?;
        Ok(Self::from_pixel_values(PixelValues { data, height: size[1] as usize, width: size[2] as usize }))
    }
}

/// A frame's vision features [1, tokens_per_image, vision hidden] and the content key of its
/// pixels.
pub struct EncodedFrame {
    pub key: ContentKey,
    pub features: Tensor,
}

impl Clone for EncodedFrame {
    /// Shares the features.
    fn clone(&self) -> Self {
        Self { key: self.key, features: self.features.shallow_clone() }
    }
}
