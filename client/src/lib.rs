//! Typed client for the gitcap gRPC server. It needs no libtorch.

/// The generated protocol types and stubs (`proto/gitcap/v1/gitcap.proto`).
pub mod proto {
    tonic::include_proto!("gitcap.v1");
}
