//! Typed client for the gitcap gRPC server. It needs no libtorch.
//!
//! [`GitcapClient`] wraps the generated `gitcap.v1.Captioner` and `gitcap.v1.Admin` stubs and the
//! standard `grpc.health.v1.Health` service: it adds the bearer tokens (the admin token on model
//! management calls), timeouts and message size limits,
//! chunks uploaded frames, and turns gRPC statuses into an [`Error`] a caller can match.
//!
//! ```no_run
//! use gitcap_client::{CaptionOptions, ClientConfig, GitcapClient, Media};
//!
//! # async fn run() -> Result<(), gitcap_client::Error> {
//! let client = GitcapClient::connect(ClientConfig::new("http://127.0.0.1:50051")).await?;
//! let image = std::fs::read("photo.jpg").expect("reading the photo");
//! let caption = client.caption(Media::image(image), &CaptionOptions::default().max_new_tokens(20)).await?;
//! println!("{}", caption.text);
//! # Ok(())
//! # }
//! ```
//!
//! [`replicas`] runs one call on every replica behind a name (a headless Service) at once.
//!
//! The generated types and stubs are in [`proto`], for anything this wrapper does not cover.

mod client;
mod error;
pub mod media;
pub mod replicas;

pub use client::{
    frame_chunks, Auth, CaptionEvent, CaptionOptions, ClientConfig, GitcapClient, HealthStatus, LiveOptions,
    ModelEvent, ProgressFn, SwapOptions, UploadOptions, UploadProgress, DEFAULT_CHUNK_SIZE, DEFAULT_MAX_MESSAGE_SIZE,
};
pub use error::{Error, Result};
pub use proto::{
    AliasStatus, CaptionResponse, LabelScore, ListResponse, LiveEvent, Media, ModelSpec, ModelState, ModelStatus,
    ScoreLabelsResponse, SwapResponse, TokenEvent,
};

/// A complete caption (or answer): the text, token ids, usage, timings and the model that served it.
pub type Caption = proto::CaptionResponse;

/// The generated protocol types and stubs (`proto/gitcap/v1/gitcap.proto`).
pub mod proto {
    tonic::include_proto!("gitcap.v1");

    impl Media {
        /// An encoded image (JPEG, PNG, WebP or GIF; the server reads an animated GIF as a video).
        pub fn image(bytes: impl Into<Vec<u8>>) -> Self {
            Self { kind: Some(media::Kind::Image(bytes.into())) }
        }

        /// The frames of a video, in order, each an encoded image.
        pub fn frames<I, B>(frames: I) -> Self
        where
            I: IntoIterator<Item = B>,
            B: Into<Vec<u8>>,
        {
            Self { kind: Some(media::Kind::Frames(Frames { frames: frames.into_iter().map(Into::into).collect() })) }
        }

        /// Uncompressed 8-bit RGB pixels, row-major (`width * height * 3` bytes).
        pub fn raw(width: u32, height: u32, rgb: impl Into<Vec<u8>>) -> Self {
            Self { kind: Some(media::Kind::Raw(RawImage { width, height, rgb: rgb.into() })) }
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
}

/// Compiles the README's examples as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
