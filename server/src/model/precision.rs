//! The precision a model is served at: one dtype for every weight (`f32`, `bf16`, `f16`), or
//! `fast`: the vision tower in bf16 (f32 on CPUs without native bf16) and int8 weights for the
//! decoder's linear layers and the LM head (`docs/fast-mode.md`).

use std::path::Path;

use tch::{Device, Kind};

use super::weights::Storage;
use super::{GitConfig, GitForCausalLM, Weights};
use crate::error::{GitcapError, Result};

/// Tensors of the vision tower in a checkpoint.
const VISION_PREFIX: &str = "git.image_encoder.";

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Precision {
    /// Every floating weight and activation in this dtype.
    Uniform(Kind),
    /// Vision tower bf16 (where the CPU computes bf16 natively), decoder and LM head weights
    /// int8 with f32 activations. CPU only.
    Fast,
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        Self::parse(text).map_err(|e| match e {
            GitcapError::InvalidArgument { message, .. } => message,
            other => other.to_string(),
        })
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for Precision {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Precision {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl From<Kind> for Precision {
    fn from(kind: Kind) -> Self {
        Self::Uniform(kind)
    }
}

impl Precision {
    /// `f32`/`float32`, `f16`/`float16`, `bf16`/`bfloat16`, or `fast`.
    pub fn parse(text: &str) -> Result<Self> {
        let kind = match text.trim().to_ascii_lowercase().as_str() {
            "fast" => return Ok(Self::Fast),
            "f32" | "float32" | "float" => Kind::Float,
            "f16" | "float16" | "half" => Kind::Half,
            "bf16" | "bfloat16" => Kind::BFloat16,
            _ => return Err(GitcapError::invalid("dtype", format!("`{text}` is not f32, f16, bf16 or fast"))),
        };
        Ok(Self::Uniform(kind))
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Uniform(Kind::Half) => "f16",
            Self::Uniform(Kind::BFloat16) => "bf16",
            Self::Uniform(_) => "f32",
            Self::Fast => "fast",
        }
    }

    /// Loads the checkpoint in `dir` at this precision; returns the model and the bytes of
    /// weights it holds.
    /// `storage`: whether tensors already in the serving dtype may stay views of the file (fast
    /// mode copies either way: its decoder weights are quantised).
    pub fn load(self, dir: &Path, device: Device, storage: Storage) -> Result<(GitForCausalLM, usize)> {
        let config = GitConfig::from_file(&dir.join("config.json"))?;
        match self {
            Self::Uniform(kind) => {
                let weights = Weights::read(dir, kind, device, storage)?;
                let bytes = weights.bytes();
                Ok((GitForCausalLM::new(config, &weights, kind, device)?, bytes))
            }
            Self::Fast => {
                if device != Device::Cpu {
                    return Err(GitcapError::invalid(
                        "dtype",
                        "`fast` runs libtorch's CPU int8 kernel and is for --device cpu; on CUDA use bf16",
                    ));
                }
                // Quantised from the f32 weights; everything but the vision tower and the
                // int8 matrices stays f32.
                let mut weights = Weights::read(dir, Kind::Float, device, Storage::Copied)?;
                weights.convert_prefix(VISION_PREFIX, fast_vision_kind());
                let bytes = weights.bytes() as i64;
                let mut model = GitForCausalLM::new(config, &weights, Kind::Float, device)?;
                drop(weights);
                let change = model.quantize_int8();
                Ok((model, (bytes + change).max(0) as usize))
            }
        }
    }
}

/// bf16 for the vision tower where the CPU has bf16 dot-product instructions (AVX-512 BF16,
/// AMX, Arm BF16); elsewhere oneDNN would emulate them, slower than f32, so f32.
pub fn fast_vision_kind() -> Kind {
    if cpu_has_native_bf16() {
        Kind::BFloat16
    } else {
        Kind::Float
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

    #[test]
    fn bf16_detection_agrees_with_proc_cpuinfo() {
        #[cfg(target_os = "linux")]
        if let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") {
            assert_eq!(cpu_has_native_bf16(), cpuinfo.contains(" avx512_bf16") || cpuinfo.contains(" bf16"));
            assert_eq!(cpu_has_amx_bf16(), cpuinfo.contains(" amx_bf16"));
        }
    }

    #[test]
    fn dtype_strings_parse_to_precisions() {
        assert_eq!(Precision::parse("fast").unwrap(), Precision::Fast);
        assert_eq!(Precision::parse(" FAST ").unwrap(), Precision::Fast);
        assert_eq!(Precision::parse("bf16").unwrap(), Precision::Uniform(Kind::BFloat16));
        assert_eq!(Precision::parse("float32").unwrap(), Precision::Uniform(Kind::Float));
        let err = Precision::parse("int8").unwrap_err().to_string();
        assert!(err.contains("fast") && err.contains("int8"), "{err}");
        assert_eq!(Precision::Fast.name(), "fast");
        assert_eq!(Precision::from(Kind::Half).name(), "f16");
    }

    #[test]
    fn fast_is_refused_off_the_cpu_before_reading_weights() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny-git-image");
        let err = Precision::Fast.load(&dir, Device::Cuda(0), Storage::Mapped).err().expect("fast on CUDA must fail");
        assert!(err.to_string().contains("--device cpu"), "{err}");
    }
}
