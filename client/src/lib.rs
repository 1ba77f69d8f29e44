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
//! [`replicas`] runs one call on every replica behind a name (a headless Service) at once;
//! [`balance`] spreads calls over them, round robin, following the name as replicas come and go.
//! [`subtitles`] writes dense captions as WebVTT or SRT.
//!
//! The generated types and stubs are in [`proto`], for anything this wrapper does not cover.

pub mod balance;
pub mod batch;
mod client;
mod error;
pub mod media;
pub mod replicas;
pub mod subtitles;

pub use client::{
    frame_chunks, Auth, CaptionEvent, CaptionOptions, ClientConfig, DenseOptions, GitcapClient, HealthStatus,
    LiveOptions, ModelEvent, ProgressFn, SwapOptions, UploadOptions, UploadProgress, VideoUploadOptions,
    DEFAULT_CHUNK_SIZE, DEFAULT_MAX_MESSAGE_SIZE,
};
pub use error::{Error, Result};
pub use proto::{
    AliasStatus, CaptionResponse, DenseCaptionEvent, LabelScore, ListResponse, LiveEvent, Media, ModelSpec, ModelState,
    ModelStatus, ScoreLabelsResponse, SwapResponse, TokenEvent, VideoSampling,
};

/// A complete caption (or answer): the text, token ids, usage, timings and the model that served it.
pub type Caption = proto::CaptionResponse;

/// The protocol's own descriptor: its messages' fields and its services' methods.
pub use gitcap_protocol::descriptor as proto_descriptor;
/// The generated protocol types and stubs (`proto/gitcap/v1/gitcap.proto`), from `gitcap_protocol`.
pub use gitcap_protocol::proto;
/// Decoding options (one definition for every surface) and recognising media by content.
pub use gitcap_protocol::{media_kind, EarlyStopping, GenerationOptions, InvalidOption, Priority};

/// Compiles the README's examples as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
