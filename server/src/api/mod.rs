//! The gRPC door: the Captioner and Admin services, health (per model too), and the conversion
//! of their messages into the request core's types (crate::service) and back. Reflection,
//! gRPC-Web and the shared port are crate::transport's.

pub mod admin;
pub mod captioner;
pub mod convert;
mod health;
pub mod status;

pub use health::track_model_health;

/// Health service name of the captioning API; each model also has `gitcap.v1.Captioner/<model>`.
pub const SERVICE_NAME: &str = crate::proto::captioner_server::SERVICE_NAME;
/// Health service name that says whether this server can decode video files (it has ffmpeg):
/// SERVING or NOT_SERVING.
pub const VIDEO_SERVICE_NAME: &str = "gitcap.v1.VideoDecoding";
/// Health service name, in declarative mode only, that says whether this server has reached the
/// state of its desired-state file: SERVING in sync, NOT_SERVING not (the file is unreadable or
/// invalid, or a version failed to load; what serves is unchanged). Not for readiness: a bad
/// version in the file must not take every replica out of service.
pub const DESIRED_STATE_SERVICE_NAME: &str = "gitcap.v1.DesiredState";
