//! The precision a model is served at: one dtype for every weight (`f32`, `bf16`, `f16`),
//! `fast`: the vision tower and the image prefill in bf16 (f32 on CPUs without native bf16) and
//! int8 weights for the decoder's linear layers and the LM head (`docs/fast-mode.md`), or
//! `auto`: whichever of f32, bf16 and fast this machine runs fastest ([`Precision::for_device`]).

use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use super::cpu::CpuFeatures;
use super::layers::Linear;
use super::weights::Storage;
use super::{GitConfig, GitForCausalLM, Weights};
use crate::error::{GitcapError, Result};

/// Tensors of the vision tower in a checkpoint.
const VISION_PREFIX: &str = "git.image_encoder.";

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Precision {
    /// Every floating weight and activation in this dtype.
    Uniform(Kind),
    /// Vision tower and image prefill bf16 where the CPU computes bf16 natively (f32
    /// elsewhere), decoder and LM head weights int8 with f32 activations. CPU only.
    Fast,
    /// Resolved to one of the others before a model loads ([`Precision::for_device`]).
    Auto,
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
    /// `f32`/`float32`, `f16`/`float16`, `bf16`/`bfloat16`, `fast`, or `auto`.
    pub fn parse(text: &str) -> Result<Self> {
        let kind = match text.trim().to_ascii_lowercase().as_str() {
            "fast" => return Ok(Self::Fast),
            "auto" => return Ok(Self::Auto),
            "f32" | "float32" | "float" => Kind::Float,
            "f16" | "float16" | "half" => Kind::Half,
            "bf16" | "bfloat16" => Kind::BFloat16,
            _ => return Err(GitcapError::invalid("dtype", format!("`{text}` is not auto, f32, f16, bf16 or fast"))),
        };
        Ok(Self::Uniform(kind))
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Uniform(Kind::Half) => "f16",
            Self::Uniform(Kind::BFloat16) => "bf16",
            Self::Uniform(_) => "f32",
            Self::Fast => "fast",
            Self::Auto => "auto",
        }
    }

    /// `auto` resolved for `device`; any other precision as it is. On the CPU: the rule of
    /// [`choose_for_cpu`] over this CPU's features and a start-up probe (run once per process,
    /// logged); on CUDA: bf16 where the device computes it, else f32.
    pub fn for_device(self, device: Device) -> Precision {
        match (self, device) {
            (Self::Auto, Device::Cpu) => auto_on_cpu(),
            (Self::Auto, Device::Cuda(_)) => cuda_auto(device),
            (Self::Auto, _) => Self::Uniform(Kind::Float),
            (concrete, _) => concrete,
        }
    }

    /// Loads the checkpoint in `dir` at this precision; returns the model and the bytes of
    /// weights it holds.
    /// `storage`: whether tensors already in the serving dtype may stay views of the file (fast
    /// mode copies either way: its decoder weights are quantised).
    pub fn load(self, dir: &Path, device: Device, storage: Storage) -> Result<(GitForCausalLM, usize)> {
        match self.for_device(device) {
            Self::Uniform(kind) => {
                let config = GitConfig::from_file(&dir.join("config.json"))?;
                let weights = Weights::read(dir, kind, device, storage)?;
                let bytes = weights.bytes();
                let mut model = GitForCausalLM::new(config, &weights, kind, device)?;
                drop(weights);
                let packed = if kind == Kind::BFloat16 { model.pack_for_one_row() } else { 0 };
                Ok((model, bytes + packed as usize))
            }
            Self::Fast => load_fast(dir, device, storage, fast_dense_kind()),
            Self::Auto => unreachable!("for_device resolves auto"),
        }
    }
}

/// Fast mode with its dense parts (vision tower, image prefill, many-row products) in `dense`:
/// bf16 or f32 ([`fast_dense_kind`] picks for this CPU). Decoder and LM head weights are int8,
/// quantised from the f32 checkpoint weights.
pub fn load_fast(dir: &Path, device: Device, storage: Storage, dense: Kind) -> Result<(GitForCausalLM, usize)> {
    if device != Device::Cpu {
        return Err(GitcapError::invalid(
            "dtype",
            "`fast` runs libtorch's CPU int8 kernel and is for --device cpu; on CUDA use bf16",
        ));
    }
    let config = GitConfig::from_file(&dir.join("config.json"))?;
    let mut weights = Weights::read(dir, Kind::Float, device, storage)?;
    weights.convert_prefix(VISION_PREFIX, dense);
    let bytes = weights.bytes() as i64;
    let mut model = GitForCausalLM::new(config, &weights, Kind::Float, device)?;
    drop(weights);
    let change = model.quantize_int8(dense);
    Ok((model, (bytes + change).max(0) as usize))
}

/// The dtype of fast mode's dense work: bf16 where the CPU has bf16 dot-product instructions
/// (AVX-512 BF16, AMX, Arm BF16); elsewhere oneDNN would emulate them, slower than f32, so f32.
pub fn fast_dense_kind() -> Kind {
    if CpuFeatures::detect().native_bf16 {
        Kind::BFloat16
    } else {
        Kind::Float
    }
}

/// Milliseconds per call of the products the modes differ in, on this CPU, best of several runs:
/// a prefill-shaped GEMM ([32, 768] × [768, 3072]) in f32 and bf16, and a decoding step's
/// matrix-vector product ([1, 768] × [768, 16384]) in f32 and through fast mode's int8 layer.
/// The step's weight (48 MiB in f32) is larger than most L3 caches, so, as in decoding, f32
/// reads it from memory while int8 reads a quarter of the bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeFigures {
    pub f32_gemm_ms: f64,
    pub bf16_gemm_ms: f64,
    pub f32_matvec_ms: f64,
    pub int8_matvec_ms: f64,
}

/// Fast mode is chosen when its int8 matrix-vector product (batch-1 decoding, which reads every
/// decoder and LM-head weight) beats f32's by this factor: where the int8 kernel is vectorised
/// it reads a quarter of the bytes (measured 2–20×); where it is a scalar loop it is slower.
pub const FAST_MIN_DECODE_SPEEDUP: f64 = 1.5;
/// bf16 is chosen (where the CPU has it natively and fast is not) when its GEMM beats f32's by
/// this factor.
pub const BF16_MIN_GEMM_SPEEDUP: f64 = 1.2;

impl ProbeFigures {
    /// Times the four products; 0.1–0.6 s and 0.1 GB transient. Runs on a thread of its own
    /// that then ends, so its tensor work leaves no OpenMP team behind (see `ModelWorker::load`).
    pub fn measure() -> Self {
        std::thread::spawn(Self::measure_here).join().expect("the dtype probe panicked")
    }

    fn measure_here() -> Self {
        let _guard = tch::no_grad_guard();
        tch::manual_seed(0);
        let opts = (Kind::Float, Device::Cpu);
        let weight = Tensor::randn([3072, 768], opts) / 28.0;
        let rows = Tensor::randn([32, 768], opts);
        let (weight_bf16, rows_bf16) = (weight.to_kind(Kind::BFloat16), rows.to_kind(Kind::BFloat16));
        let step_weight = Tensor::randn([16384, 768], opts) / 28.0;
        let row = Tensor::randn([1, 768], opts);
        let mut int8 = Linear::new(step_weight.shallow_clone(), None);
        int8.quantize_int8(Kind::Float);
        Self {
            f32_gemm_ms: best_ms(|| rows.linear(&weight, None::<&Tensor>)),
            bf16_gemm_ms: best_ms(|| rows_bf16.linear(&weight_bf16, None::<&Tensor>)),
            f32_matvec_ms: best_ms(|| row.linear(&step_weight, None::<&Tensor>)),
            int8_matvec_ms: best_ms(|| int8.forward(&row)),
        }
    }
}

/// The fastest of 20 calls after a warm-up, in ms: the least disturbed by other processes (on a
/// busy machine a parallel product waits for a time slice for its second thread: 0.4 ms calls
/// were seen taking 8 ms in most of 10 tries at a load of 8 on 2 cores).
fn best_ms(call: impl Fn() -> Tensor) -> f64 {
    let _ = call();
    (0..20)
        .map(|_| {
            let start = Instant::now();
            let _ = call();
            start.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

/// `auto` on a CPU: fast where its int8 decoding step is clearly faster than f32's (its vision
/// tower and prefill then run bf16 or f32, whichever the CPU has natively, so they are never
/// slower than the other modes'); otherwise bf16 where the CPU computes bf16 natively and its
/// GEMM is clearly faster than f32's; otherwise f32. Emulated bf16 is never chosen, whatever the
/// probe says. Returns the choice and why, for the log.
pub fn choose_for_cpu(features: CpuFeatures, probe: &ProbeFigures) -> (Precision, String) {
    let decode = probe.f32_matvec_ms / probe.int8_matvec_ms;
    let gemm = probe.f32_gemm_ms / probe.bf16_gemm_ms;
    let (precision, why) = if decode >= FAST_MIN_DECODE_SPEEDUP {
        let dense = if features.native_bf16 { "bf16" } else { "f32" };
        (Precision::Fast, format!("int8 decoding step {decode:.1}x f32's; vision tower and prefill in {dense}"))
    } else if features.native_bf16 && gemm >= BF16_MIN_GEMM_SPEEDUP {
        (
            Precision::Uniform(Kind::BFloat16),
            format!("int8 step only {decode:.1}x f32's; native bf16 GEMM {gemm:.1}x f32's"),
        )
    } else if features.native_bf16 {
        (Precision::Uniform(Kind::Float), format!("int8 step only {decode:.1}x f32's, bf16 GEMM only {gemm:.1}x"))
    } else {
        (Precision::Uniform(Kind::Float), format!("int8 step only {decode:.1}x f32's; no native bf16"))
    };
    (precision, why)
}

/// [`choose_for_cpu`] on this CPU, probed once per process and logged.
fn auto_on_cpu() -> Precision {
    static CHOICE: OnceLock<Precision> = OnceLock::new();
    *CHOICE.get_or_init(|| {
        let features = CpuFeatures::detect();
        let probe = ProbeFigures::measure();
        let (precision, why) = choose_for_cpu(features, &probe);
        tracing::info!(
            "dtype auto = {precision} on this CPU ({}; probe ms: f32 GEMM {:.3}, bf16 GEMM {:.3}, f32 step {:.3}, int8 step {:.3}): {why}",
            features.describe(),
            probe.f32_gemm_ms,
            probe.bf16_gemm_ms,
            probe.f32_matvec_ms,
            probe.int8_matvec_ms,
        );
        precision
    })
}

/// bf16 where a bf16 product runs on `device`, else f32.
fn cuda_auto(device: Device) -> Precision {
    let _guard = tch::no_grad_guard();
    let product = Tensor::f_ones([16, 16], (Kind::BFloat16, device)).and_then(|a| a.f_matmul(&a));
    let kind = if product.is_ok() { Kind::BFloat16 } else { Kind::Float };
    tracing::info!("dtype auto = {} on {device:?}", Precision::Uniform(kind));
    Precision::Uniform(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn probe(f32_gemm_ms: f64, bf16_gemm_ms: f64, f32_matvec_ms: f64, int8_matvec_ms: f64) -> ProbeFigures {
        ProbeFigures { f32_gemm_ms, bf16_gemm_ms, f32_matvec_ms, int8_matvec_ms }
    }

    const AVX2: CpuFeatures = CpuFeatures { avx2: true, avx512: false, native_bf16: false, amx_bf16: false };
    const AMX: CpuFeatures = CpuFeatures { avx2: true, avx512: true, native_bf16: true, amx_bf16: true };

    #[test]
    fn auto_picks_fast_wherever_the_int8_step_is_clearly_faster() {
        // AMX Xeon and AVX2-only EPYC alike (figures of the shape measured there).
        let (choice, why) = choose_for_cpu(AMX, &probe(1.0, 0.3, 1.0, 0.1));
        assert_eq!(choice, Precision::Fast, "{why}");
        assert!(why.contains("in bf16"), "{why}");
        let (choice, why) = choose_for_cpu(AVX2, &probe(3.0, 15.0, 1.0, 0.3));
        assert_eq!(choice, Precision::Fast, "{why}");
        assert!(why.contains("in f32"), "{why}");
    }

    #[test]
    fn auto_picks_bf16_only_where_it_is_native_and_faster_and_f32_otherwise() {
        // A scalar int8 loop (no AVX2): fast is out.
        let slow_int8 = probe(3.0, 1.0, 1.0, 4.0);
        assert_eq!(choose_for_cpu(AMX, &slow_int8).0, Precision::Uniform(Kind::BFloat16));
        // The same figures without native bf16: a fast-looking bf16 probe is not trusted.
        assert_eq!(choose_for_cpu(AVX2, &slow_int8).0, Precision::Uniform(Kind::Float));
        // Native bf16 that is not faster than f32.
        assert_eq!(choose_for_cpu(AMX, &probe(1.0, 1.0, 1.0, 0.9)).0, Precision::Uniform(Kind::Float));
        // Just below the thresholds.
        assert_eq!(choose_for_cpu(AVX2, &probe(1.0, 1.0, 1.0, 1.0 / 1.49)).0, Precision::Uniform(Kind::Float));
    }

    #[test]
    fn auto_resolves_to_a_concrete_precision_and_others_stay() {
        assert_eq!(Precision::parse("auto").unwrap(), Precision::Auto);
        assert_eq!(Precision::Auto.name(), "auto");
        let resolved = Precision::Auto.for_device(Device::Cpu);
        assert!(matches!(resolved, Precision::Fast | Precision::Uniform(Kind::Float | Kind::BFloat16)), "{resolved}");
        assert_eq!(Precision::Auto.for_device(Device::Cpu), resolved, "probed once: the same answer");
        assert_eq!(Precision::Fast.for_device(Device::Cpu), Precision::Fast);
        assert_eq!(Precision::Uniform(Kind::Half).for_device(Device::Cuda(0)), Precision::Uniform(Kind::Half));
    }

    #[test]
    fn fast_is_refused_off_the_cpu_before_reading_weights() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny-git-image");
        let err = Precision::Fast.load(&dir, Device::Cuda(0), Storage::Mapped).err().expect("fast on CUDA must fail");
        assert!(err.to_string().contains("--device cpu"), "{err}");
    }
}
