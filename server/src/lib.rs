//! gitcap: serving Microsoft's GIT vision-language models over gRPC.
//!
//! Data flows one way: request → `api` → `engine` (a model's own thread) → `model` → tokens.

pub mod allocator;
pub mod api;
pub mod benchmark;
pub mod deadline;
pub mod device;
pub mod engine;
pub mod error;
pub mod fidelity;
pub mod media;
pub mod metrics;
pub mod model;
pub mod oip;
pub mod oneshot;
pub mod openai;
pub mod optional_setting;
pub mod registry;
pub mod server;
pub mod service;
pub mod settings;
pub mod telemetry;
pub mod transport;
pub mod web;

/// The generated protocol (`proto/gitcap/v1/gitcap.proto`), from `gitcap_protocol`.
pub use gitcap_protocol::proto;
