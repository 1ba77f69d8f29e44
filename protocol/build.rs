//! Compiles `proto/` with protox (no system `protoc`) into tonic server and client code, and
//! writes the descriptor set (gRPC reflection, and tests that compare surfaces with the protocol).

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let fds = protox::compile(["gitcap/v1/gitcap.proto"], ["../proto"])?;
    std::fs::write(out_dir.join("gitcap_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    // The Open Inference Protocol (v2), package `inference`: its own descriptor set, so that the
    // surfaces tests read of `gitcap.v1` stay gitcap's own.
    let fds = protox::compile(["grpc_predict_v2.proto"], ["../proto"])?;
    std::fs::write(out_dir.join("inference_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    Ok(())
}
