//! The few building blocks GIT needs, as plain tensors read from the checkpoint.

use tch::Tensor;

use super::weights::Weights;
use crate::error::{GitcapError, Result};

/// `nn.Linear`: `weight` is [out, in].
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn load(w: &Weights, prefix: &str, in_dim: i64, out_dim: i64) -> Result<Self> {
        Ok(Self {
            weight: w.get(&format!("{prefix}.weight"), &[out_dim, in_dim])?,
            bias: Some(w.get(&format!("{prefix}.bias"), &[out_dim])?),
        })
    }

    pub fn forward(&self, xs: &Tensor) -> Tensor {
        xs.linear(&self.weight, self.bias.as_ref())
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
}

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
