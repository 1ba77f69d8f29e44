//! Gives the fuzz targets an rpath to libtorch (which gitcap-server links), as the root
//! package's build.rs does for its own binaries, so they run without LD_LIBRARY_PATH.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(dir) = std::env::var("LIBTORCH") {
        println!("cargo:rustc-link-arg=-Wl,--disable-new-dtags");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}/lib");
    }
}
