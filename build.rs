//! Build script of the server package:
//! 1. compiles `proto/` with protox (no system `protoc`) into tonic server + client code and a
//!    descriptor set for gRPC reflection;
//! 2. gives every binary and test of this package an rpath to libtorch, so they run without
//!    LD_LIBRARY_PATH.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &["proto/gitcap/v1/gitcap.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    compile_protos()?;
    link_libtorch();
    Ok(())
}

fn compile_protos() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let fds = protox::compile(PROTOS, ["proto"])?;
    std::fs::write(out_dir.join("gitcap_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    Ok(())
}

fn link_libtorch() {
    // torch-sys (the `links = "tch"` crate) reports where it found libtorch.
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let lib_dir =
        env::var("DEP_TCH_LIBTORCH_LIB").ok().or_else(|| env::var("LIBTORCH").ok().map(|dir| format!("{dir}/lib")));
    if let Some(lib_dir) = lib_dir {
        // DT_RPATH (not RUNPATH) so that libtorch's own dependencies resolve from there too.
        println!("cargo:rustc-link-arg=-Wl,--disable-new-dtags");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    }
    if env::var_os("CARGO_FEATURE_CUDA").is_some() {
        // libtorch_cuda registers its kernels from static initialisers: nothing references it
        // by symbol, so it must be linked even though it looks unused.
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
