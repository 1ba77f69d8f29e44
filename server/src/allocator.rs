//! glibc malloc settings for tensor work. libtorch allocates every CPU tensor with `malloc`,
//! and a batched vision pass or prefill frees and reallocates activations of 10–40 MB per
//! layer. By default glibc hands such blocks back to the kernel (`munmap`, or trimming the heap
//! top), so the next layer faults the same amount of zeroed memory in again: a quarter of a
//! batched vision pass went to page faults (8 frames in bf16: 51 → 39 ms per frame with these
//! settings; README, "Engine").
//! Keeping freed memory in the process instead costs RSS up to the largest batch's working
//! set, which the batch settings already bound; what a load or an unload frees is handed back
//! ([`release_free_memory`]).

/// Blocks up to this size come from the heap and are reused (glibc's maximum; larger ones are
/// still mapped and unmapped each time).
const MMAP_THRESHOLD: i32 = 32 << 20;
/// Free memory at the top of the heap up to this size is kept, not returned to the kernel.
const TRIM_THRESHOLD: i32 = 1 << 30;
/// Extra memory asked of the kernel each time the heap grows (address space; pages are only
/// made resident when used).
const TOP_PAD: i32 = 64 << 20;

/// Applies the settings above unless the environment sets glibc's own (`MALLOC_*_` variables or
/// `GLIBC_TUNABLES`): an operator's choice wins. Returns whether they were applied.
pub fn keep_freed_tensor_memory() -> bool {
    let operator_set = std::env::vars_os().any(|(key, _)| {
        let key = key.to_string_lossy();
        (key.starts_with("MALLOC_") && key.ends_with('_')) || key == "GLIBC_TUNABLES"
    });
    if operator_set {
        return false;
    }
    apply()
}

/// Hands the heap's free memory back to the kernel. Called when a model has loaded (the
/// checkpoint's conversion buffers, freed by then, would otherwise stay in the process under the
/// settings above) and when one has been unloaded.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> bool {
    // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
            && libc::mallopt(libc::M_TOP_PAD, TOP_PAD) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> bool {
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    #[test]
    fn glibc_accepts_the_settings() {
        assert!(super::apply(), "mallopt refused a value (the mmap threshold is at most 32 MiB)");
    }
}
