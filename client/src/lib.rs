//! Typed client for the gitcap gRPC server. It needs no libtorch.
//!
//! [`GitcapClient`] wraps the generated `gitcap.v1.Captioner` stub and the standard
//! `grpc.health.v1.Health` service: it adds the bearer token, timeouts and message size limits,
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
//! The generated types and stubs are in [`proto`], for anything this wrapper does not cover.

mod client;
mod error;
pub mod media;

pub use client::{
    frame_chunks, Auth, CaptionEvent, CaptionOptions, ClientConfig, GitcapClient, HealthStatus, LiveOptions,
    ProgressFn, UploadOptions, UploadProgress, DEFAULT_CHUNK_SIZE, DEFAULT_MAX_MESSAGE_SIZE,
};
pub use error::{Error, Result};
pub use proto::{CaptionResponse, LabelScore, LiveEvent, Media, ScoreLabelsResponse, TokenEvent};

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
}

/// Compiles the README's examples as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
