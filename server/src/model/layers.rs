//! The few building blocks GIT needs, as plain tensors read from the checkpoint.

use tch::{Kind, Tensor};

use super::lanes;
use super::matvec::{self, Bf16, PackedWeight};
use super::weights::Weights;
use crate::error::{GitcapError, Result};

/// `nn.Linear`: `weight` is [out, in], dense in the serving dtype, or int8 after
/// [`Linear::quantize_int8`].
pub struct Linear {
    weight: LinearWeight,
    pub bias: Option<Tensor>,
    /// The same weight and bias laid out for one row of activations (batch-1 decoding), where
    /// [`PackedWeight::matvec`] is vectorised: int8 layers get it when quantised, dense ones
    /// from [`Linear::pack_for_one_row`].
    one_row: Option<PackedWeight>,
}

enum LinearWeight {
    Dense(Tensor),
    Int8(Int8Weight),
}

/// Weight-only int8 (symmetric, one scale per output channel) for libtorch's
/// `_weight_int8pack_mm`, whose CPU kernel is vectorised (AVX2/AVX-512) only for bf16
/// activations and needs the reduction length to be a multiple of 16 with 32-byte aligned
/// rows: the weight's columns are zero-padded to that length, and inputs with them.
struct Int8Weight {
    /// int8 [out, padded in].
    values: Tensor,
    /// bf16 [out]: `weight[o, i] ≈ values[o, i] * scales[o]`.
    scales: Tensor,
    /// [out, in] for inputs of [`int8_max_rows`] rows or more (a prefill, a large decoding
    /// batch), made once: in bf16 `values * scales`; in f32 (CPUs without native bf16, where a
    /// bf16 GEMM is emulated) the layer's own f32 weight, shared, not copied.
    dense: Tensor,
    in_features: i64,
}

/// Reduction lengths of `_weight_int8pack_mm` must be multiples of this.
const INT8_K_MULTIPLE: i64 = 16;
/// Inputs of at least this many rows multiply by the dequantised bf16 weight instead: the int8
/// kernel is a matrix-vector kernel (4×4 dot-product tiles) whose time grows with the rows,
/// while oneDNN's bf16 GEMM barely does. Measured with torch 2.11 (docs/fast-mode.md): on a CPU
/// with AMX the GEMM wins from 8 rows (a decoding batch), on AVX-512/AVX2 only from about 64
/// (a prefill).
pub fn int8_max_rows() -> i64 {
    static ROWS: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *ROWS.get_or_init(|| if super::cpu::CpuFeatures::detect().amx_bf16 { 8 } else { 64 })
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight: LinearWeight::Dense(weight), bias, one_row: None }
    }

    pub fn load(w: &Weights, prefix: &str, in_dim: i64, out_dim: i64) -> Result<Self> {
        Ok(Self::new(
            w.get(&format!("{prefix}.weight"), &[out_dim, in_dim])?,
            Some(w.get(&format!("{prefix}.bias"), &[out_dim])?),
        ))
    }

    pub fn forward(&self, xs: &Tensor) -> Tensor {
        if let Some(packed) = &self.one_row {
            if xs.numel() == packed.k() && xs.device() == tch::Device::Cpu {
                if let Some(ys) = one_row(packed, xs) {
                    return ys;
                }
            }
        }
        match &self.weight {
            LinearWeight::Dense(weight) if weight.kind() == xs.kind() => xs.linear(weight, self.bias.as_ref()),
            // A weight kept in another dtype than the activations (fast mode's bf16 layers):
            // the product in the weight's dtype, the bias added in the activations'.
            LinearWeight::Dense(weight) => {
                let y = xs.to_kind(weight.kind()).linear(weight, None::<&Tensor>).to_kind(xs.kind());
                match &self.bias {
                    Some(b) => y + b,
                    None => y,
                }
            }
            LinearWeight::Int8(q) => q.forward(xs, self.bias.as_ref()),
        }
    }

    /// Keeps the weight dense, in `kind` (the bias keeps its dtype): fast mode's layers that
    /// int8 would round too coarsely. Returns the change in bytes held.
    pub fn keep_dense(&mut self, kind: Kind) -> i64 {
        let LinearWeight::Dense(weight) = &self.weight else { return 0 };
        if weight.kind() == kind {
            return 0;
        }
        let converted = weight.to_kind(kind);
        let change = tensor_bytes(&converted) - tensor_bytes(weight);
        self.weight = LinearWeight::Dense(converted);
        let repacked = self.one_row.take().map_or(0, |old| self.pack_for_one_row() - old.bytes() as i64);
        change + repacked
    }

    /// Keeps a copy of a dense bf16 or f32 weight (and the bias, in f32) laid out for one row of
    /// activations ([`PackedWeight`]), which batch-1 decoding then multiplies by instead of
    /// libtorch's kernels: 1.5–2× their speed at streaming weights that are not in cache
    /// (bench/NOTES.md). Only on the CPU, where that loop is vectorised. Returns the bytes added.
    pub fn pack_for_one_row(&mut self) -> i64 {
        let LinearWeight::Dense(weight) = &self.weight else { return 0 };
        if self.one_row.is_some() || weight.device() != tch::Device::Cpu || !matvec::vectorised() {
            return 0;
        }
        let (n, k) = weight.size2().expect("a linear weight is [out, in]");
        let (n, k) = (n as usize, k as usize);
        let bias = self.bias.as_ref().map(f32_values);
        let packed = match weight.kind() {
            Kind::BFloat16 => PackedWeight::bf16(&bf16_bits(weight), n, k, bias),
            Kind::Float => PackedWeight::f32(&f32_values(weight), n, k, bias),
            _ => return 0,
        };
        let bytes = packed.bytes() as i64;
        self.one_row = Some(packed);
        bytes
    }

    /// Replaces the weight by its int8 quantisation (symmetric, per output channel:
    /// `scale = max|w_row| / 127`, round to nearest, clamp to ±127); the bias keeps its dtype.
    /// For inputs of many rows a dense weight is kept in `dense` (bf16: int8 × scale, rounded;
    /// f32: the weight itself). Returns the change in bytes this layer holds (negative: fewer);
    /// already int8: 0.
    pub fn quantize_int8(&mut self, dense: Kind) -> i64 {
        let LinearWeight::Dense(weight) = &self.weight else { return 0 };
        let dense_bytes = tensor_bytes(weight) + self.one_row.as_ref().map_or(0, |p| p.bytes() as i64);
        let q = Int8Weight::quantize(weight, dense);
        self.one_row = q.packed(self.bias.as_ref());
        let int8_bytes = tensor_bytes(&q.values)
            + tensor_bytes(&q.scales)
            + tensor_bytes(&q.dense)
            + self.one_row.as_ref().map_or(0, |p| p.bytes() as i64);
        self.weight = LinearWeight::Int8(q);
        int8_bytes - dense_bytes
    }

    /// The same layer with a dense weight in `kind`, for inputs of many rows: an int8 layer's
    /// dense weight (shared, not copied, when it is in `kind`), a dense one converted (shared
    /// when already in `kind`); the bias likewise.
    pub fn dense_twin(&self, kind: Kind) -> Linear {
        let weight = match &self.weight {
            LinearWeight::Dense(weight) => weight.to_kind(kind),
            LinearWeight::Int8(q) => q.dense.to_kind(kind),
        };
        Linear::new(weight, self.bias.as_ref().map(|b| b.to_kind(kind)))
    }

    /// The weight [out, in] unless it is quantised.
    pub fn dense_weight(&self) -> Option<&Tensor> {
        match &self.weight {
            LinearWeight::Dense(weight) => Some(weight),
            LinearWeight::Int8(_) => None,
        }
    }
}

pub fn tensor_bytes(t: &Tensor) -> i64 {
    (t.numel() * t.kind().elt_size_in_bytes()) as i64
}

/// One row of f32 or bf16 activations `xs` [.., k] through `packed` → [.., n] in `xs`' dtype;
/// `None` for other dtypes. f32 activations are read and the result written in place; bf16
/// activations are widened exactly and the f32 result is rounded once, as libtorch's bf16
/// linear does.
fn one_row(packed: &PackedWeight, xs: &Tensor) -> Option<Tensor> {
    let mut size = xs.size();
    *size.last_mut().expect("inputs have a feature dimension") = packed.n() as i64;
    let x = xs.contiguous();
    match x.kind() {
        Kind::Float => {
            let out = Tensor::empty(size.as_slice(), (Kind::Float, tch::Device::Cpu));
            // SAFETY: contiguous f32 CPU tensors of k and n values; `out` is new and not shared.
            unsafe {
                let input = std::slice::from_raw_parts(x.data_ptr() as *const f32, packed.k());
                let output = std::slice::from_raw_parts_mut(out.data_ptr() as *mut f32, packed.n());
                packed.matvec(input, output);
            }
            Some(out)
        }
        Kind::BFloat16 => {
            let widened: Vec<f32> = bf16_bits(&x).into_iter().map(|bits| Bf16(bits).to_f32()).collect();
            let mut ys = vec![0f32; packed.n()];
            packed.matvec(&widened, &mut ys);
            Some(from_f32_values(&ys, Kind::BFloat16).view(size.as_slice()))
        }
        _ => None,
    }
}

/// A 1-D tensor of `values` in `kind`, f32 or bf16 (rounded to nearest even, as libtorch does).
fn from_f32_values(values: &[f32], kind: Kind) -> Tensor {
    match kind {
        Kind::BFloat16 => {
            let rounded: Vec<i16> = values.iter().map(|&v| Bf16::from_f32(v).0 as i16).collect();
            Tensor::from_slice(&rounded).view_dtype(Kind::BFloat16)
        }
        _ => Tensor::from_slice(values),
    }
}

/// The values of an f32 CPU tensor, in order.
fn f32_values(t: &Tensor) -> Vec<f32> {
    Vec::try_from(t.to_kind(Kind::Float).contiguous().view([-1])).expect("f32 values read back")
}

/// The bit patterns of a bf16 CPU tensor's values, in order.
fn bf16_bits(t: &Tensor) -> Vec<u16> {
    let bits: Vec<i16> = Vec::try_from(t.contiguous().view([-1]).view_dtype(Kind::Int16)).expect("bf16 bits read back");
    bits.into_iter().map(|b| b as u16).collect()
}

impl Int8Weight {
    fn quantize(weight: &Tensor, dense: Kind) -> Self {
        let _guard = tch::no_grad_guard();
        let (_, in_features) = weight.size2().expect("a linear weight is [out, in]");
        let w = weight.to_kind(Kind::Float);
        // The scale the kernel will use is bf16: quantise against that rounded scale, so the
        // only error is the int8 rounding (and a clamp of at most 2⁻⁹ of the row's maximum).
        // All-zero rows get scale 1 (their values are 0 either way).
        let absmax = w.abs().amax([1], true);
        let scales = (absmax.clamp_min(f32::MIN_POSITIVE as f64) / 127.0).to_kind(Kind::BFloat16);
        let values = (w / scales.to_kind(Kind::Float)).round().clamp(-127.0, 127.0).to_kind(Kind::Int8);
        let padded = (in_features + INT8_K_MULTIPLE - 1) / INT8_K_MULTIPLE * INT8_K_MULTIPLE;
        let values = if padded == in_features { values } else { values.constant_pad_nd([0, padded - in_features]) };
        let (values, scales) = (values.contiguous(), scales.view([-1]).contiguous());
        let dense = match dense {
            Kind::BFloat16 => values.narrow(1, 0, in_features).to_kind(Kind::BFloat16) * scales.unsqueeze(1),
            kind => weight.to_kind(kind),
        };
        Self { values, scales, dense, in_features }
    }

    /// These values, scales and `bias` laid out for one row of activations, where that loop
    /// is vectorised.
    fn packed(&self, bias: Option<&Tensor>) -> Option<PackedWeight> {
        matvec::vectorised().then(|| {
            let unpadded: Vec<i8> = Vec::try_from(self.values.narrow(1, 0, self.in_features).contiguous().view([-1]))
                .expect("int8 values read back");
            let (n, k) = (self.values.size()[0] as usize, self.in_features as usize);
            PackedWeight::int8(&unpadded, n, k, f32_values(&self.scales), bias.map(f32_values))
        })
    }

    /// `xs` [.., in] of any float dtype → [.., out] in that dtype.
    fn forward(&self, xs: &Tensor, bias: Option<&Tensor>) -> Tensor {
        let mut size = xs.size();
        let out_features = self.values.size()[0];
        let rows = xs.numel() as i64 / self.in_features;
        *size.last_mut().expect("inputs have a feature dimension") = out_features;
        let x = xs.reshape([rows, self.in_features]);
        let many = rows >= int8_max_rows();
        if many && self.dense.kind() == xs.kind() {
            // f32 activations on the f32 weight: exactly the f32 layer.
            return x.linear(&self.dense, bias).view(size.as_slice());
        }
        let y = if many {
            x.to_kind(self.dense.kind()).linear(&self.dense, None::<&Tensor>)
        } else {
            let x = x.to_kind(Kind::BFloat16);
            let padded = self.values.size()[1];
            let x = if padded == self.in_features { x } else { x.constant_pad_nd([0, padded - self.in_features]) };
            kernel_aligned(x).internal_weight_int8pack_mm(&self.values, &self.scales)
        };
        let y = y.to_kind(xs.kind());
        let y = match bias {
            Some(b) => y + b,
            None => y,
        };
        y.view(size.as_slice())
    }
}

/// The int8 kernel reads its input rows with 32-byte aligned loads: a contiguous tensor whose
/// data starts on a 64-byte boundary (rows are multiples of 16 bf16 values, so all are).
fn kernel_aligned(x: Tensor) -> Tensor {
    let x = x.contiguous();
    if (x.data_ptr() as usize).is_multiple_of(64) {
        x
    } else {
        x.copy()
    }
}

/// `nn.LayerNorm` over the last dimension.
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
    dim: i64,
}

impl LayerNorm {
    pub fn load(w: &Weights, prefix: &str, dim: i64, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.get(&format!("{prefix}.weight"), &[dim])?,
            bias: w.get(&format!("{prefix}.bias"), &[dim])?,
            eps,
            dim,
        })
    }

    pub fn forward(&self, xs: &Tensor) -> Tensor {
        xs.layer_norm([self.dim], Some(&self.weight), Some(&self.bias), self.eps, true)
    }

    pub fn to_kind(&self, kind: Kind) -> LayerNorm {
        LayerNorm { weight: self.weight.to_kind(kind), bias: self.bias.to_kind(kind), eps: self.eps, dim: self.dim }
    }
}

/// Activations of at most this many values (a decoding step's few rows) take gitcap's GELU
/// loop ([`lanes::gelu`]): libtorch runs them on one thread too (its grain is 32768 values),
/// 5–10× slower.
const ONE_THREAD_GELU: usize = 32_768;

/// The activations GIT checkpoints name in `hidden_act`.
#[derive(Debug, Clone, Copy)]
pub enum Activation {
    /// Exact (erf) GELU: BERT's `gelu`.
    Gelu,
    /// tanh-approximated GELU: `gelu_new`, `gelu_pytorch_tanh`.
    GeluTanh,
    /// CLIP's `x * sigmoid(1.702 x)`.
    QuickGelu,
    Relu,
}

impl Activation {
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Self::GeluTanh,
            "quick_gelu" => Self::QuickGelu,
            "relu" => Self::Relu,
            other => return Err(GitcapError::model_files(format!("config.json: unsupported hidden_act `{other}`"))),
        })
    }

    pub fn forward(self, xs: &Tensor) -> Tensor {
        match self {
            Self::Gelu if xs.numel() <= ONE_THREAD_GELU && xs.device() == tch::Device::Cpu => {
                match (lanes::Level::detect(), xs.kind()) {
                    (Some(level), Kind::Float | Kind::BFloat16) => {
                        let mut values = f32_values(xs);
                        lanes::gelu(level, &mut values);
                        from_f32_values(&values, xs.kind()).view(xs.size().as_slice())
                    }
                    _ => xs.gelu("none"),
                }
            }
            Self::Gelu => xs.gelu("none"),
            Self::GeluTanh => xs.gelu("tanh"),
            Self::QuickGelu => xs * (xs * 1.702).sigmoid(),
            Self::Relu => xs.relu(),
        }
    }
}

/// Splits [batch, seq, heads * head_dim] into [batch, heads, seq, head_dim].
pub fn split_heads(xs: &Tensor, heads: i64) -> Tensor {
    let (b, s, c) = xs.size3().expect("hidden states are [batch, seq, hidden]");
    xs.view([b, s, heads, c / heads]).transpose(1, 2)
}

/// Inverse of [`split_heads`].
pub fn merge_heads(xs: &Tensor) -> Tensor {
    let (b, h, s, d) = xs.size4().expect("attention output is [batch, heads, seq, head_dim]");
    xs.transpose(1, 2).contiguous().view([b, s, h * d])
}

/// Attention with softmax(q kᵀ / √d) v; `mask` (bool, true = may attend) broadcasts over
/// [batch, heads, q, k].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Tensor {
    Tensor::scaled_dot_product_attention(q, k, v, mask, 0.0, false, None, false)
}

/// [`attention`] of text queries `q` [batch, heads, seq, head_dim] over two runs of keys and
/// values taken as one sequence: the image tokens' `image_keys`/`image_values` [1, heads,
/// image_tokens, head_dim], one copy that every row (and every request on the same frames)
/// shares and that each of them sees whole, then the rows' own `text_keys`/`text_values`
/// [batch, heads, text, head_dim], of which the queries are the last `seq`: each sees every image
/// token and the text up to its own position. One softmax runs over both runs' scores, so the
/// result is attention over their concatenation without the image part ever being copied next
/// to the text.
///
/// Computed in f32 (the dtype of the key/value cache): scores, softmax and weighted sums. In
/// bf16, libtorch's fused kernel takes 5× longer than these products for one query over a
/// thousand keys on a CPU, and bf16 products would round the scores.
pub fn attention_image_then_text(
    q: &Tensor,
    (image_keys, image_values): (&Tensor, &Tensor),
    (text_keys, text_values): (&Tensor, &Tensor),
) -> Tensor {
    if let Some(context) = super::step_attention::attend(q, (image_keys, image_values), (text_keys, text_values)) {
        return context;
    }
    let (batch, heads, seq, head_dim) = q.size4().expect("queries are [batch, heads, seq, head_dim]");
    let text_len = text_keys.size()[2];
    let text_hidden = (seq > 1).then(|| later_text_mask(text_len - seq, seq, q.device()));
    let image_tokens = image_keys.size()[2];
    // Image keys and values kept in bf16 (`decoder::prefix_kind`) are widened to the text's f32.
    let kind = text_keys.kind();
    let widened = |t: &Tensor| if t.kind() == kind { t.shallow_clone() } else { t.to_kind(kind) };
    let (image_keys, image_values) = (&widened(image_keys), &widened(image_values));
    let q = q.to_kind(kind) * (1.0 / (head_dim as f64).sqrt());
    // Every row's queries against the one image copy: the rows fold into the query axis, since a
    // batched product would expand the image part to every row.
    let rows_as_queries = |t: &Tensor| t.transpose(0, 1).reshape([1, heads, batch * seq, -1]);
    let queries_as_rows = |t: Tensor| t.view([heads, batch, seq, -1]).transpose(0, 1);
    let folded = if batch == 1 { q.shallow_clone() } else { rows_as_queries(&q) };
    let image_scores = folded.matmul(&image_keys.transpose(-2, -1));
    let image_scores = if batch == 1 { image_scores } else { queries_as_rows(image_scores) };
    let text_scores = q.matmul(&text_keys.transpose(-2, -1));
    let text_scores = match &text_hidden {
        Some(hidden) => text_scores.masked_fill(hidden, f64::NEG_INFINITY),
        None => text_scores,
    };
    let probs = Tensor::cat(&[image_scores, text_scores], -1).softmax(-1, kind);
    let text_len = probs.size()[3] - image_tokens;
    let (image_probs, text_probs) = (probs.narrow(-1, 0, image_tokens), probs.narrow(-1, image_tokens, text_len));
    let image_part = if batch == 1 {
        image_probs.matmul(image_values)
    } else {
        queries_as_rows(rows_as_queries(&image_probs).matmul(image_values))
    };
    image_part + text_probs.matmul(text_values)
}

/// [seq, cached_text + seq] boolean mask of the text positions that `seq` new text tokens may
/// not see (true): those after themselves. Every cached text token and every image token is
/// visible.
fn later_text_mask(cached_text: i64, seq: i64, device: tch::Device) -> Tensor {
    let rows = Tensor::arange(seq, (Kind::Int64, device)).unsqueeze(1);
    let cols = Tensor::arange(cached_text + seq, (Kind::Int64, device)).unsqueeze(0);
    cols.gt_tensor(&(rows + cached_text))
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;

    fn linear(out: i64, inp: i64, seed: i64) -> (Tensor, Tensor) {
        tch::manual_seed(seed);
        let opts = (Kind::Float, Device::Cpu);
        (Tensor::randn([out, inp], opts) / (inp as f64).sqrt(), Tensor::randn([out], opts) * 0.1)
    }

    fn relative(actual: &Tensor, expected: &Tensor) -> f64 {
        (actual - expected).norm().double_value(&[]) / expected.norm().double_value(&[])
    }

    /// The packed copy of an int8 [out, in] weight with its f32 scales and bias (none where not
    /// vectorised); these sizes are whole blocks and chunks.
    fn packed_bytes(out: i64, inp: i64) -> i64 {
        if matvec::vectorised() {
            out * inp + out * 4 + out * 4
        } else {
            0
        }
    }

    /// x · (q · s)ᵀ + b with x rounded to bf16 as the kernel sees it, accumulated in f32.
    fn dequantised_reference(layer: &Linear, xs: &Tensor) -> Tensor {
        let LinearWeight::Int8(q) = &layer.weight else { panic!("not quantised") };
        let w = q.values.narrow(1, 0, q.in_features).to_kind(Kind::Float) * q.scales.to_kind(Kind::Float).unsqueeze(1);
        xs.to_kind(Kind::BFloat16).to_kind(Kind::Float).linear(&w, layer.bias.as_ref())
    }

    #[test]
    fn quantisation_is_symmetric_per_output_channel_and_round_to_nearest() {
        let _guard = tch::no_grad_guard();
        let (w, b) = linear(48, 64, 1);
        let _ = w.get(5).fill_(0.0);
        let mut layer = Linear::new(w.shallow_clone(), Some(b));
        let change = layer.quantize_int8(Kind::BFloat16);
        let packed = packed_bytes(48, 64);
        assert_eq!(
            change,
            -(48 * 64 * 4) + 48 * 64 + 48 * 2 + 48 * 64 * 2 + packed,
            "int8, bf16 scales, the bf16 copy and the packed copy"
        );
        let LinearWeight::Int8(q) = &layer.weight else { panic!("not quantised") };
        assert_eq!(q.values.kind(), Kind::Int8);
        assert_eq!(q.scales.kind(), Kind::BFloat16);
        let dequantised = q.values.to_kind(Kind::BFloat16) * q.scales.unsqueeze(1);
        assert!(bool::try_from(q.dense.eq_tensor(&dequantised).all()).unwrap(), "the bf16 copy is values × scales");
        let values = q.values.to_kind(Kind::Float);
        let scales = q.scales.to_kind(Kind::Float).unsqueeze(1);
        let row_max = values.abs().amax([1], false);
        for row in 0..48 {
            let expected = if row == 5 { 0.0 } else { 127.0 };
            assert_eq!(row_max.double_value(&[row]), expected, "row {row} spans the int8 range");
        }
        // Round to nearest: every weight within half a step (plus the bf16 scale's clamp slack).
        let error = (&w - &values * &scales).abs();
        let bound = &scales * 0.5 + w.abs().amax([1], true) * 2f64.powi(-8);
        assert!(
            bool::try_from(error.le_tensor(&bound).all()).unwrap(),
            "an int8 value is off by more than half a step"
        );
    }

    #[test]
    fn int8_forward_matches_the_dequantised_matmul_for_any_rows_and_width() {
        let _guard = tch::no_grad_guard();
        // 40 is not a multiple of the kernel's 16: the weight and the inputs are zero-padded.
        for (out, inp) in [(96, 64), (24, 40), (8, 8)] {
            let (w, b) = linear(out, inp, 2);
            let mut layer = Linear::new(w.shallow_clone(), Some(b.shallow_clone()));
            layer.quantize_int8(Kind::BFloat16);
            // Below and above int8_max_rows (the dequantised bf16 GEMM), with a leading batch.
            for rows in [1, 3, int8_max_rows() + 5] {
                let xs = Tensor::randn([2, rows, inp], (Kind::Float, Device::Cpu));
                let ys = layer.forward(&xs);
                assert_eq!(ys.size(), [2, rows, out]);
                assert_eq!(ys.kind(), Kind::Float, "the output keeps the input's dtype");
                let rel = relative(&ys, &dequantised_reference(&layer, &xs));
                assert!(rel < 5e-3, "[{out}, {inp}], {rows} rows: {rel} off the dequantised matmul");
                let rel_f32 = relative(&ys, &xs.linear(&w, Some(&b)));
                assert!(rel_f32 < 3e-2, "[{out}, {inp}], {rows} rows: {rel_f32} off the f32 layer");
            }
        }
    }

    #[test]
    fn one_f32_row_is_multiplied_with_f32_activations_where_the_packed_loop_runs() {
        let _guard = tch::no_grad_guard();
        // Channels not a whole block, a width not a whole chunk (both padded in the packing);
        // enough channels to be split between libtorch's threads.
        let (w, b) = linear(302, 776, 7);
        let mut layer = Linear::new(w, Some(b.shallow_clone()));
        layer.quantize_int8(Kind::Float);
        let LinearWeight::Int8(q) = &layer.weight else { panic!("not quantised") };
        let dequantised =
            q.values.narrow(1, 0, 776).to_kind(Kind::Double) * q.scales.to_kind(Kind::Double).unsqueeze(1);
        let x = Tensor::randn([1, 776], (Kind::Float, Device::Cpu));
        let exact = x.to_kind(Kind::Double).linear(&dequantised, Some(&b.to_kind(Kind::Double)));
        let y = layer.forward(&x);
        assert_eq!((y.size(), y.kind()), (vec![1, 302], Kind::Float));
        let rel = relative(&y.to_kind(Kind::Double), &exact);
        // libtorch's kernel rounds the activations to bf16 (about 1e-3 off); the packed loop
        // only accumulates in f32.
        let bound = if matvec::vectorised() { 1e-6 } else { 5e-3 };
        assert!(rel < bound, "{rel} off the int8 product in f64");
        // Two rows take libtorch's kernel and agree to its rounding.
        let two = Tensor::cat(&[&x, &x], 0);
        assert!(relative(&layer.forward(&two).narrow(0, 0, 1), &y) < 5e-3);
    }

    #[test]
    fn one_row_through_a_packed_dense_weight_is_the_product_accumulated_in_f32() {
        let _guard = tch::no_grad_guard();
        // Channels not a whole block, a width not a whole chunk; split between threads.
        let (w, b) = linear(302, 776, 8);
        for kind in [Kind::BFloat16, Kind::Float] {
            let (w, b) = (w.to_kind(kind), b.to_kind(kind));
            let mut layer = Linear::new(w.shallow_clone(), Some(b.shallow_clone()));
            let added = layer.pack_for_one_row();
            if !matvec::vectorised() {
                assert_eq!(added, 0, "no packed copy where the loop is not vectorised");
                continue;
            }
            let padded = 304 * 784 * kind.elt_size_in_bytes() as i64;
            assert_eq!(added, padded + 302 * 4, "values padded to whole blocks and chunks, and an f32 bias");
            assert_eq!(layer.pack_for_one_row(), 0, "packed once");
            let exact = |x: &Tensor| {
                let double = |t: &Tensor| t.to_kind(Kind::Double);
                double(x).linear(&double(&w), Some(&double(&b)))
            };
            // f32 activations (fast mode's dense layer): only f32 accumulation; libtorch's
            // path would round them to bf16 first (about 1e-3 off), so this fails without the loop.
            let x = Tensor::randn([1, 776], (Kind::Float, Device::Cpu));
            let y = layer.forward(&x);
            assert_eq!((y.size(), y.kind()), (vec![1, 302], Kind::Float));
            assert!(relative(&y.to_kind(Kind::Double), &exact(&x)) < 1e-6);
            // bf16 activations (bf16 mode): the exact product rounded once to bf16, as
            // libtorch's bf16 linear gives it (to within that rounding).
            let x = x.to_kind(Kind::BFloat16);
            let y = layer.forward(&x);
            assert_eq!(y.kind(), Kind::BFloat16);
            let rounded = exact(&x).to_kind(Kind::BFloat16).to_kind(Kind::Double);
            let off = (y.to_kind(Kind::Double) - &rounded).abs();
            let ulp = rounded.abs() * 2f64.powi(-7) + 1e-30;
            assert!(bool::try_from(off.le_tensor(&ulp).all()).unwrap(), "bf16 outputs within one rounding step");
            if kind == Kind::BFloat16 {
                let libtorch = x.linear(&w, Some(&b));
                assert!(relative(&y.to_kind(Kind::Float), &libtorch.to_kind(Kind::Float)) < 4e-3);
            }
            // Two rows keep libtorch's kernel.
            let two = Tensor::cat(&[&x, &x], 0);
            assert!(relative(&layer.forward(&two).to_kind(Kind::Float), &y.to_kind(Kind::Float)) < 4e-3);
        }
    }

    #[test]
    fn int8_forward_accepts_bf16_inputs_that_start_off_the_kernels_alignment() {
        let _guard = tch::no_grad_guard();
        let (w, b) = linear(32, 64, 3);
        let mut layer = Linear::new(w, Some(b.to_kind(Kind::BFloat16)));
        layer.quantize_int8(Kind::BFloat16);
        let flat = Tensor::randn([4 * 64 + 1], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        // One element in: contiguous, but 2 bytes past an aligned address.
        let shifted = flat.narrow(0, 1, 4 * 64).view([4, 64]);
        assert_ne!(shifted.data_ptr() as usize % 32, 0);
        let ys = layer.forward(&shifted);
        assert_eq!(ys.kind(), Kind::BFloat16);
        let expected = layer.forward(&shifted.copy());
        assert!(bool::try_from(ys.eq_tensor(&expected).all()).unwrap());
    }

    #[test]
    fn a_dense_layer_is_plain_linear() {
        let _guard = tch::no_grad_guard();
        let (w, b) = linear(16, 24, 4);
        let xs = Tensor::randn([3, 24], (Kind::Float, Device::Cpu));
        let layer = Linear::new(w.shallow_clone(), Some(b.shallow_clone()));
        assert!(bool::try_from(layer.forward(&xs).eq_tensor(&xs.linear(&w, Some(&b))).all()).unwrap());
        assert!(layer.dense_weight().is_some());
    }

    #[test]
    fn a_layer_kept_dense_in_bf16_takes_f32_inputs_and_returns_f32() {
        let _guard = tch::no_grad_guard();
        let (w, b) = linear(16, 32, 6);
        let xs = Tensor::randn([2, 32], (Kind::Float, Device::Cpu));
        let mut layer = Linear::new(w.shallow_clone(), Some(b.shallow_clone()));
        assert_eq!(layer.keep_dense(Kind::Float), 0, "already f32: kept as it is");
        assert_eq!(layer.keep_dense(Kind::BFloat16), -(16 * 32 * 2), "f32 → bf16 halves the weight");
        let y = layer.forward(&xs);
        assert_eq!(y.kind(), Kind::Float);
        let bf16 = |t: &Tensor| t.to_kind(Kind::BFloat16);
        let expected = bf16(&xs).linear(&bf16(&w), None::<&Tensor>).to_kind(Kind::Float) + &b;
        assert!(bool::try_from(y.eq_tensor(&expected).all()).unwrap());
        assert!(relative(&y, &xs.linear(&w, Some(&b))) < 1e-2);
    }

    #[test]
    fn the_dense_twin_of_an_int8_layer_shares_its_dense_weight_and_computes_the_same_product() {
        let _guard = tch::no_grad_guard();
        let (w, b) = linear(48, 64, 5);
        let mut layer = Linear::new(w, Some(b));
        layer.quantize_int8(Kind::BFloat16);
        let twin = layer.dense_twin(Kind::BFloat16);
        let LinearWeight::Int8(q) = &layer.weight else { panic!("not quantised") };
        let twin_weight = twin.dense_weight().expect("the twin is dense");
        assert_eq!(twin_weight.data_ptr(), q.dense.data_ptr(), "no second copy of the weight");
        assert_eq!((twin_weight.kind(), twin.bias.as_ref().unwrap().kind()), (Kind::BFloat16, Kind::BFloat16));
        // Many rows: the int8 layer multiplies by the same dequantised weight.
        let xs = Tensor::randn([int8_max_rows(), 64], (Kind::Float, Device::Cpu));
        let expected = layer.forward(&xs);
        let actual = twin.forward(&xs.to_kind(Kind::BFloat16)).to_kind(Kind::Float);
        assert!(relative(&actual, &expected) < 1e-2, "{}", relative(&actual, &expected));
    }

    #[test]
    fn with_f32_dense_work_many_rows_are_exactly_the_f32_layer_and_few_rows_the_int8_kernel() {
        let _guard = tch::no_grad_guard();
        let (w, b) = linear(96, 64, 6);
        let mut layer = Linear::new(w.shallow_clone(), Some(b.shallow_clone()));
        let change = layer.quantize_int8(Kind::Float);
        assert_eq!(
            change,
            96 * 64 + 96 * 2 + packed_bytes(96, 64),
            "int8, bf16 scales and the packed copy beside the f32 weight it shares"
        );
        let LinearWeight::Int8(q) = &layer.weight else { panic!("not quantised") };
        assert_eq!(q.dense.data_ptr(), w.data_ptr(), "the f32 weight is shared, not copied");
        let many = Tensor::randn([2, int8_max_rows(), 64], (Kind::Float, Device::Cpu));
        let exact = many.linear(&w, Some(&b));
        assert!(bool::try_from(layer.forward(&many).eq_tensor(&exact).all()).unwrap(), "no bf16 anywhere on many rows");
        let few = Tensor::randn([3, 64], (Kind::Float, Device::Cpu));
        let rel = relative(&layer.forward(&few), &dequantised_reference(&layer, &few));
        assert!(rel < 5e-3, "few rows run the int8 kernel: {rel} off the dequantised matmul");
        assert!(relative(&layer.forward(&few), &few.linear(&w, Some(&b))) > 1e-4, "few rows are quantised");
    }

    /// Attention over [image ; text] as one sequence, by the fused kernel on the concatenation
    /// (the image expanded to every row) with `text_hidden` widened to it.
    fn concatenated(
        q: &Tensor,
        image: (&Tensor, &Tensor),
        text: (&Tensor, &Tensor),
        text_hidden: Option<&Tensor>,
    ) -> Tensor {
        let rows = q.size()[0];
        let whole = |i: &Tensor, t: &Tensor| Tensor::cat(&[i.expand([rows, -1, -1, -1], false), t.shallow_clone()], 2);
        let (keys, values) = (whole(image.0, text.0), whole(image.1, text.1));
        let visible = text_hidden.map(|hidden| {
            let seq = q.size()[2];
            let image_cols = Tensor::ones([seq, image.0.size()[2]], (Kind::Bool, Device::Cpu));
            Tensor::cat(&[image_cols, hidden.logical_not()], 1)
        });
        let q = q.to_kind(Kind::Float);
        attention(&q, &keys, &values, visible.as_ref())
    }

    #[test]
    fn attention_over_a_shared_image_then_text_is_attention_over_their_concatenation() {
        let _guard = tch::no_grad_guard();
        tch::manual_seed(7);
        let (heads, image_tokens) = (4, 23);
        let f32 = (Kind::Float, Device::Cpu);
        // Heads of 16: gitcap's own loop (step_attention) where the CPU has AVX2; of 8: libtorch.
        // One row, one query (a decoding step); three rows (beams) sharing the image; three new
        // tokens after two cached ones (a prompt), masked causally among the text.
        for (head_dim, rows, seq, cached) in
            [16, 8].into_iter().flat_map(|d| [(d, 1, 1, 4), (d, 3, 1, 4), (d, 1, 3, 2), (d, 3, 3, 2)])
        {
            let image = (
                Tensor::randn([1, heads, image_tokens, head_dim], f32),
                Tensor::randn([1, heads, image_tokens, head_dim], f32),
            );
            let text_len = cached + seq;
            let text = (
                Tensor::randn([rows, heads, text_len, head_dim], f32),
                Tensor::randn([rows, heads, text_len, head_dim], f32),
            );
            let q = Tensor::randn([rows, heads, seq, head_dim], f32) * 2.0;
            let hidden = (seq > 1).then(|| {
                let r = Tensor::arange(seq, (Kind::Int64, Device::Cpu)).unsqueeze(1);
                Tensor::arange(text_len, (Kind::Int64, Device::Cpu)).unsqueeze(0).gt_tensor(&(r + cached))
            });
            let split = attention_image_then_text(&q, (&image.0, &image.1), (&text.0, &text.1));
            let whole = concatenated(&q, (&image.0, &image.1), (&text.0, &text.1), hidden.as_ref());
            assert_eq!(split.size(), whole.size());
            let rel = relative(&split, &whole);
            assert!(rel < 1e-6, "head {head_dim}, rows {rows}, seq {seq}: {rel}");
            // bf16 queries (bf16 mode's projections) over the f32 cache: the f32 result on the
            // rounded queries.
            let q16 = q.to_kind(Kind::BFloat16);
            let rel = relative(
                &attention_image_then_text(&q16, (&image.0, &image.1), (&text.0, &text.1)),
                &concatenated(&q16, (&image.0, &image.1), (&text.0, &text.1), hidden.as_ref()),
            );
            assert!(rel < 1e-6, "bf16 queries, head {head_dim}, rows {rows}, seq {seq}: {rel}");
        }
    }
}
