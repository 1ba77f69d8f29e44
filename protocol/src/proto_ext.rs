//! Constructors for the protocol messages callers build most.

use crate::proto::{media, Frames, Media, ModelSpec, RawImage, VideoSampling};

impl Media {
    /// An encoded image (JPEG, PNG, WebP or GIF; the server reads an animated GIF as a video).
    pub fn image(bytes: impl Into<Vec<u8>>) -> Self {
        Self { kind: Some(media::Kind::Image(bytes.into())), ..Default::default() }
    }

    /// The frames of a video, in order, each an encoded image.
    pub fn frames<I, B>(frames: I) -> Self
    where
        I: IntoIterator<Item = B>,
        B: Into<Vec<u8>>,
    {
        let frames = Frames { frames: frames.into_iter().map(Into::into).collect() };
        Self { kind: Some(media::Kind::Frames(frames)), ..Default::default() }
    }

    /// Uncompressed 8-bit RGB pixels, row-major (`width * height * 3` bytes).
    pub fn raw(width: u32, height: u32, rgb: impl Into<Vec<u8>>) -> Self {
        Self { kind: Some(media::Kind::Raw(RawImage { width, height, rgb: rgb.into() })), ..Default::default() }
    }
}

impl Media {
    /// A video file (MP4/MOV, WebM, MKV, AVI); the server samples its frames.
    pub fn video(bytes: impl Into<Vec<u8>>) -> Self {
        Self { kind: Some(media::Kind::Video(bytes.into())), ..Default::default() }
    }

    /// An http(s) URL of an image or video file, fetched by the server (where it allows URLs).
    pub fn url(url: impl Into<String>) -> Self {
        Self { kind: Some(media::Kind::Url(url.into())), ..Default::default() }
    }

    /// Which frames of a video the model sees (see [`VideoSampling`]).
    pub fn with_sampling(mut self, sampling: VideoSampling) -> Self {
        self.sampling = Some(sampling);
        self
    }
}

impl VideoSampling {
    /// Even spacing within `[start_s, end_s)` (either may be `None`: the video's start or end).
    pub fn window(start_s: Option<f64>, end_s: Option<f64>) -> Self {
        Self { start_s, end_s, ..Default::default() }
    }

    /// Exactly these timestamps (seconds, increasing).
    pub fn at(timestamps_s: impl Into<Vec<f64>>) -> Self {
        Self { timestamps_s: timestamps_s.into(), ..Default::default() }
    }
}

impl ModelSpec {
    /// A model to load as `name` from `source`: a local checkpoint directory (inside the
    /// server's model roots) or a Hugging Face Hub repo id.
    pub fn new(name: impl Into<String>, source: impl Into<String>) -> Self {
        Self { name: name.into(), source: source.into(), ..Default::default() }
    }

    /// The Hub revision (branch, tag or commit).
    pub fn revision(mut self, revision: impl Into<String>) -> Self {
        self.revision = revision.into();
        self
    }

    /// The version label of a local directory (default `local`).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// The device, e.g. `cpu` or `cuda:0` (default: the server's).
    pub fn device(mut self, device: impl Into<String>) -> Self {
        self.device = device.into();
        self
    }

    /// The dtype, e.g. `f16` (default: the server's).
    pub fn dtype(mut self, dtype: impl Into<String>) -> Self {
        self.dtype = dtype.into();
        self
    }
}
