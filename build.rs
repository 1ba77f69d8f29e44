//! Build script of the server package: gives every binary and test of this package an rpath to
//! libtorch, so they run without LD_LIBRARY_PATH. (The protocol is compiled by `protocol/`.)

use std::env;

fn main() {
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
