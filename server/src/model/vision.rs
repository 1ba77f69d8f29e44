//! The CLIP vision tower (`git.image_encoder.vision_model`), as transformers'
//! `GitVisionTransformer`: patch embedding, class + position embeddings, `pre_layrnorm`,
//! pre-LN encoder layers with quick_gelu MLPs, and `post_layernorm` on every token.

use tch::Tensor;

use super::config::GitVisionConfig;
use super::layers::{attention, merge_heads, split_heads, Activation, LayerNorm, Linear};
use super::weights::Weights;
use crate::error::Result;

pub struct GitVisionEmbeddings {
    class_embedding: Tensor,
    patch_embedding: Tensor,
    position_embedding: Tensor,
    patch_size: i64,
}

impl GitVisionEmbeddings {
    fn load(w: &Weights, prefix: &str, c: &GitVisionConfig) -> Result<Self> {
        let dim = c.hidden_size;
        Ok(Self {
            class_embedding: w.get(&format!("{prefix}.class_embedding"), &[dim])?,
            patch_embedding: w
                .get(&format!("{prefix}.patch_embedding.weight"), &[dim, c.num_channels, c.patch_size, c.patch_size])?,
            position_embedding: w.get(&format!("{prefix}.position_embedding.weight"), &[c.tokens_per_image(), dim])?,
            patch_size: c.patch_size,
        })
    }

    /// [frames, 3, H, W] → [frames, 1 + patches, hidden]
    fn forward(&self, pixel_values: &Tensor) -> Tensor {
        let frames = pixel_values.size()[0];
        let patches = pixel_values
            .to_kind(self.patch_embedding.kind())
            .conv2d(&self.patch_embedding, None::<&Tensor>, [self.patch_size; 2], [0, 0], [1, 1], 1)
            .flatten(2, 3)
            .transpose(1, 2);
        let class = self.class_embedding.view([1, 1, -1]).expand([frames, 1, -1], false);
        Tensor::cat(&[class, patches], 1) + &self.position_embedding
    }
}

struct GitVisionAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: i64,
}

impl GitVisionAttention {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let q = split_heads(&self.q_proj.forward(xs), self.heads);
        let k = split_heads(&self.k_proj.forward(xs), self.heads);
        let v = split_heads(&self.v_proj.forward(xs), self.heads);
        self.out_proj.forward(&merge_heads(&attention(&q, &k, &v, None)))
    }
}

struct GitVisionEncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: GitVisionAttention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl GitVisionEncoderLayer {
    fn load(w: &Weights, prefix: &str, c: &GitVisionConfig) -> Result<Self> {
        let (d, i, eps) = (c.hidden_size, c.intermediate_size, c.layer_norm_eps);
        let attn = |name: &str| Linear::load(w, &format!("{prefix}.self_attn.{name}"), d, d);
        Ok(Self {
            layer_norm1: LayerNorm::load(w, &format!("{prefix}.layer_norm1"), d, eps)?,
            self_attn: GitVisionAttention {
                q_proj: attn("q_proj")?,
                k_proj: attn("k_proj")?,
                v_proj: attn("v_proj")?,
                out_proj: attn("out_proj")?,
                heads: c.num_attention_heads,
            },
            layer_norm2: LayerNorm::load(w, &format!("{prefix}.layer_norm2"), d, eps)?,
            fc1: Linear::load(w, &format!("{prefix}.mlp.fc1"), d, i)?,
            fc2: Linear::load(w, &format!("{prefix}.mlp.fc2"), i, d)?,
            act: Activation::from_name(&c.hidden_act)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        let xs = xs + self.self_attn.forward(&self.layer_norm1.forward(xs));
        let mlp = self.fc2.forward(&self.act.forward(&self.fc1.forward(&self.layer_norm2.forward(&xs))));
        xs + mlp
    }
}

/// `GitVisionTransformer`: pixels of some frames in, one hidden state per patch (+ class) out.
pub struct GitVisionTransformer {
    embeddings: GitVisionEmbeddings,
    pre_layrnorm: LayerNorm,
    layers: Vec<GitVisionEncoderLayer>,
    post_layernorm: LayerNorm,
}

impl GitVisionTransformer {
    pub fn load(w: &Weights, prefix: &str, c: &GitVisionConfig) -> Result<Self> {
        let (d, eps) = (c.hidden_size, c.layer_norm_eps);
        Ok(Self {
            embeddings: GitVisionEmbeddings::load(w, &format!("{prefix}.embeddings"), c)?,
            pre_layrnorm: LayerNorm::load(w, &format!("{prefix}.pre_layrnorm"), d, eps)?,
            layers: (0..c.num_hidden_layers)
                .map(|i| GitVisionEncoderLayer::load(w, &format!("{prefix}.encoder.layers.{i}"), c))
                .collect::<Result<_>>()?,
            post_layernorm: LayerNorm::load(w, &format!("{prefix}.post_layernorm"), d, eps)?,
        })
    }

    /// [frames, 3, H, W] → `last_hidden_state` [frames, tokens_per_image, hidden].
    pub fn forward(&self, pixel_values: &Tensor) -> Tensor {
        let mut progress = self.begin(pixel_values);
        self.advance(&mut progress, self.layers.len());
        self.finish(progress)
    }

    /// The tower's first part (embeddings, `pre_layrnorm`): a pass to run in parts with
    /// [`Self::advance`], so that other work can go between its layers; [`Self::forward`] is
    /// the same computation in one go.
    pub fn begin(&self, pixel_values: &Tensor) -> VisionProgress {
        VisionProgress { hidden: self.pre_layrnorm.forward(&self.embeddings.forward(pixel_values)), layers_done: 0 }
    }

    /// Runs up to `layers` more encoder layers; whether all have run.
    pub fn advance(&self, progress: &mut VisionProgress, layers: usize) -> bool {
        let end = (progress.layers_done + layers).min(self.layers.len());
        for layer in &self.layers[progress.layers_done..end] {
            progress.hidden = layer.forward(&progress.hidden);
        }
        progress.layers_done = end;
        end == self.layers.len()
    }

    /// `post_layernorm` once every layer has run: the `last_hidden_state`.
    pub fn finish(&self, progress: VisionProgress) -> Tensor {
        debug_assert_eq!(progress.layers_done, self.layers.len(), "finish before the last layer");
        self.post_layernorm.forward(&progress.hidden)
    }
}

/// A vision-tower pass partway: the hidden states after `layers_done` encoder layers.
pub struct VisionProgress {
    hidden: Tensor,
    layers_done: usize,
}
