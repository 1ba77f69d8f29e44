//! What the CPU computes natively, as the model's kernels may use it: which dtypes are fast here.

use std::sync::OnceLock;

/// What the CPU offers for the products a model runs, as oneDNN may use it: an ISA cap set with
/// `ONEDNN_MAX_CPU_ISA` (or `DNNL_MAX_CPU_ISA`) below bf16 leaves bf16 emulated, so it counts
/// as absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuFeatures {
    pub avx2: bool,
    pub avx512: bool,
    /// bf16 dot products in hardware: AVX-512 BF16 (AMX CPUs have it too) or Arm BF16.
    pub native_bf16: bool,
    /// AMX tiles with bf16 (Sapphire Rapids and later).
    pub amx_bf16: bool,
}

impl CpuFeatures {
    pub fn detect() -> Self {
        static FEATURES: OnceLock<CpuFeatures> = OnceLock::new();
        *FEATURES.get_or_init(|| {
            let isa_cap = std::env::var("ONEDNN_MAX_CPU_ISA").or_else(|_| std::env::var("DNNL_MAX_CPU_ISA")).ok();
            Self::of_this_cpu().capped_by(isa_cap.as_deref())
        })
    }

    fn of_this_cpu() -> Self {
        #[cfg(target_arch = "x86_64")]
        let (avx2, avx512) =
            (std::arch::is_x86_feature_detected!("avx2"), std::arch::is_x86_feature_detected!("avx512f"));
        #[cfg(not(target_arch = "x86_64"))]
        let (avx2, avx512) = (false, false);
        Self { avx2, avx512, native_bf16: cpu_has_native_bf16(), amx_bf16: cpu_has_amx_bf16() }
    }

    /// These features as oneDNN sees them under the ISA cap `isa` (its names: `AVX2`,
    /// `AVX512_CORE_BF16`, `AVX512_CORE_AMX`, `ALL`, ...).
    pub fn capped_by(self, isa: Option<&str>) -> Self {
        let Some(isa) = isa.map(|isa| isa.trim().to_ascii_lowercase()).filter(|isa| !isa.is_empty()) else {
            return self;
        };
        if isa == "all" || isa == "default" {
            return self;
        }
        let bf16 = ["bf16", "amx", "fp16", "avx10"].iter().any(|name| isa.contains(name));
        Self {
            avx2: self.avx2 && isa != "sse41" && isa != "avx",
            avx512: self.avx512 && (isa.starts_with("avx512") || isa.starts_with("avx10")),
            native_bf16: self.native_bf16 && bf16,
            amx_bf16: self.amx_bf16 && isa.contains("amx"),
        }
    }

    pub fn describe(self) -> String {
        let flag = |on: bool, name: &str| format!("{name}={}", if on { "yes" } else { "no" });
        [
            flag(self.avx2, "avx2"),
            flag(self.avx512, "avx512"),
            flag(self.native_bf16, "bf16"),
            flag(self.amx_bf16, "amx_bf16"),
        ]
        .join(" ")
    }
}

/// AMX with bf16 tiles (Sapphire Rapids and later): oneDNN's bf16 GEMM is then fast even on a
/// few rows.
pub fn cpu_has_amx_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        #[allow(unused_unsafe)]
        // SAFETY: CPUID is always available on x86-64, and leaf 7 is read only where the CPU
        // reports it.
        unsafe {
            // CPUID leaf 7, sub-leaf 0, EDX bit 22: AMX-BF16.
            std::arch::x86_64::__get_cpuid_max(0).0 >= 7 && std::arch::x86_64::__cpuid_count(7, 0).edx & (1 << 22) != 0
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn cpu_has_native_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // CPUID leaf 7, sub-leaf 1, EAX bit 5: AVX512_BF16 (AMX machines have it too);
        // `is_x86_feature_detected!("avx512bf16")` needs a newer Rust than the MSRV.
        std::arch::is_x86_feature_detected!("avx512f") && {
            #[allow(unused_unsafe)]
            // SAFETY: CPUID is always available on x86-64; an AVX-512 CPU has leaf 7.
            let leaf = unsafe { std::arch::x86_64::__cpuid_count(7, 1) };
            leaf.eax & (1 << 5) != 0
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("bf16")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AVX2: CpuFeatures = CpuFeatures { avx2: true, avx512: false, native_bf16: false, amx_bf16: false };
    const AMX: CpuFeatures = CpuFeatures { avx2: true, avx512: true, native_bf16: true, amx_bf16: true };

    #[test]
    fn bf16_detection_agrees_with_proc_cpuinfo() {
        #[cfg(target_os = "linux")]
        if let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") {
            assert_eq!(cpu_has_native_bf16(), cpuinfo.contains(" avx512_bf16") || cpuinfo.contains(" bf16"));
            assert_eq!(cpu_has_amx_bf16(), cpuinfo.contains(" amx_bf16"));
        }
    }

    #[test]
    fn an_onednn_isa_cap_below_bf16_counts_as_no_bf16() {
        assert_eq!(AMX.capped_by(None), AMX);
        assert_eq!(AMX.capped_by(Some("ALL")), AMX);
        assert_eq!(AMX.capped_by(Some("AVX2")), AVX2);
        let bf16_only = AMX.capped_by(Some("avx512_core_bf16"));
        assert!(bf16_only.native_bf16 && !bf16_only.amx_bf16 && bf16_only.avx512);
        assert_eq!(AVX2.capped_by(Some("AVX512_CORE_AMX")), AVX2, "a cap adds nothing");
    }
}
