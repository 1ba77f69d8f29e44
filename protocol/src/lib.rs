//! gitcap's wire protocol and the types every surface shares.
//!
//! The server, the Rust client, both command-line tools and the fuzz targets take these from
//! here, so that each thing is defined once:
//! - [`proto`]: the generated `gitcap.v1` messages and services (`proto/gitcap/v1/gitcap.proto`)
//!   and its descriptor set; [`inference`]: the Open Inference Protocol v2 (KServe, Triton);
//! - [`GenerationOptions`]: the decoding options of a request, with their range checks, their
//!   command-line flags (feature `clap`), their JSON names and their protocol mapping;
//! - [`Priority`]: interactive or batch, on every request that generates;
//! - [`media_kind`]: recognising images and video containers by their first bytes.

pub mod descriptor;
pub mod media_kind;
pub mod options;
pub mod priority;
mod proto_ext;

pub use options::{EarlyStopping, GenerationOptions, InvalidOption, MAX_TOP_LOGPROBS};
pub use priority::Priority;

/// The generated protocol (`proto/gitcap/v1/gitcap.proto`), server and client code.
pub mod proto {
    tonic::include_proto!("gitcap.v1");
    /// Encoded descriptor set of the protocol, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("gitcap_descriptor");
}

/// The Open Inference Protocol v2 (`proto/grpc_predict_v2.proto`, package `inference`), server
/// and client code: KServe's and Triton's gRPC protocol, served by gitcap's `oip` door.
pub mod inference {
    tonic::include_proto!("inference");
    /// Encoded descriptor set of the protocol, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("inference_descriptor");
}
