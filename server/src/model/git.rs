//! `GitForCausalLM`: the vision tower, the visual projection, the temporal embeddings of
//! video checkpoints, the decoder and the LM head (`output`), loaded from a checkpoint.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::config::GitConfig;
use super::decoder::{GitEmbeddings, GitEncoder, ImagePrefix, KvCache};
use super::layers::{tensor_bytes, LayerNorm, Linear};
use super::vision::{GitVisionTransformer, VisionProgress};
use super::weights::Weights;
use crate::error::{GitcapError, Result};

/// `GitProjection`: Linear + LayerNorm from the vision width to the decoder width.
struct GitProjection {
    linear: Linear,
    layer_norm: LayerNorm,
}

pub struct GitForCausalLM {
    pub config: GitConfig,
    embeddings: GitEmbeddings,
    image_encoder: GitVisionTransformer,
    encoder: GitEncoder,
    visual_projection: GitProjection,
    /// One [vision hidden] vector per frame position, for video checkpoints.
    img_temporal_embedding: Vec<Tensor>,
    output: Linear,
    kind: Kind,
    device: Device,
}

impl GitForCausalLM {
    /// Loads `config.json` and the weights of a checkpoint directory.
    pub fn from_dir(dir: &Path, kind: Kind, device: Device) -> Result<Self> {
        let config = GitConfig::from_file(&dir.join("config.json"))?;
        let weights = Weights::from_dir(dir, kind, device)?;
        Self::new(config, &weights, kind, device)
    }

    pub fn new(config: GitConfig, w: &Weights, kind: Kind, device: Device) -> Result<Self> {
        let c = &config;
        let (hidden, vision_hidden) = (c.hidden_size, c.vision_config.hidden_size);
        let embeddings = GitEmbeddings::load(w, "git.embeddings", c)?;
        // transformers ties the LM head to the word embeddings when the checkpoint has no
        // `output.weight`.
        let output_weight = if w.contains("output.weight") || !c.tie_word_embeddings {
            w.get("output.weight", &[c.vocab_size, hidden])?
        } else {
            embeddings.word_embeddings().shallow_clone()
        };
        let output = Linear::new(output_weight, Some(w.get("output.bias", &[c.vocab_size])?));
        let img_temporal_embedding = (0..c.num_image_with_embedding.unwrap_or(0))
            .map(|i| w.get(&format!("git.img_temporal_embedding.{i}"), &[1, 1, vision_hidden]))
            .collect::<Result<_>>()?;
        Ok(Self {
            embeddings,
            image_encoder: GitVisionTransformer::load(w, "git.image_encoder.vision_model", &c.vision_config)?,
            encoder: GitEncoder::load(w, "git.encoder", c)?,
            visual_projection: GitProjection {
                linear: Linear::load(w, "git.visual_projection.visual_projection.0", vision_hidden, hidden)?,
                layer_norm: LayerNorm::load(
                    w,
                    "git.visual_projection.visual_projection.1",
                    hidden,
                    c.vision_config.layer_norm_eps,
                )?,
            },
            img_temporal_embedding,
            output,
            config,
            kind,
            device,
        })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Vision tower on a batch of frames [frames, 3, H, W] (any dtype/device) →
    /// [frames, tokens_per_image, vision hidden]. Frames are independent, so callers may
    /// encode them one at a time as they arrive and concatenate.
    pub fn encode_frames(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let mut progress = self.begin_encoding(pixel_values)?;
        self.encode_layers(&mut progress, usize::MAX);
        Ok(self.finish_encoding(progress))
    }

    /// [`Self::encode_frames`] in parts: the embeddings now, then [`Self::encode_layers`] a few
    /// layers at a time (other work may run between), then [`Self::finish_encoding`].
    pub fn begin_encoding(&self, pixel_values: &Tensor) -> Result<VisionProgress> {
        let v = &self.config.vision_config;
        let size = pixel_values.size();
        if size.len() != 4 || size[1] != v.num_channels || size[2] != v.image_size || size[3] != v.image_size {
            return Err(GitcapError::invalid(
                "pixel_values",
                format!("expected [frames, {}, {}, {}], got {size:?}", v.num_channels, v.image_size, v.image_size),
            ));
        }
        Ok(self.image_encoder.begin(&pixel_values.to_device(self.device).to_kind(self.kind)))
    }

    /// Runs up to `layers` more layers of the vision tower; whether all have run.
    pub fn encode_layers(&self, progress: &mut VisionProgress, layers: usize) -> bool {
        self.image_encoder.advance(progress, layers)
    }

    /// The frame features once every layer has run (as [`Self::encode_frames`] returns them).
    pub fn finish_encoding(&self, progress: VisionProgress) -> Tensor {
        self.image_encoder.finish(progress)
    }

    /// Frame features (from [`Self::encode_frames`], in order) → the decoder's image tokens
    /// [1, frames * tokens_per_image, hidden]: temporal embedding per frame for video
    /// checkpoints, then the visual projection.
    pub fn image_tokens(&self, frame_features: &Tensor) -> Result<Tensor> {
        // The vision tower may run in another dtype than the decoder (fast mode).
        let frame_features = &frame_features.to_kind(self.kind);
        let frames = frame_features.size()[0];
        let max = self.config.max_frames();
        if frames < 1 || frames > max {
            return Err(GitcapError::invalid("media", format!("this model takes 1 to {max} frames, got {frames}")));
        }
        let features = if self.img_temporal_embedding.is_empty() {
            frame_features.shallow_clone()
        } else {
            let temporal = Tensor::cat(&self.img_temporal_embedding[..frames as usize], 0);
            frame_features + temporal
        };
        let flat = features.reshape([1, -1, self.config.vision_config.hidden_size]);
        Ok(self.visual_projection.layer_norm.forward(&self.visual_projection.linear.forward(&flat)))
    }

    /// Starts decoding: the image tokens' keys and values for `batch` sequences with room
    /// for `text_capacity` text tokens.
    pub fn prefill_image(&self, image_tokens: &Tensor, batch: i64, text_capacity: i64) -> Result<KvCache> {
        self.check_text_capacity(text_capacity)?;
        Ok(self.encoder.prefill_image(image_tokens, batch, text_capacity))
    }

    /// [`Self::prefill_image`] for several requests at once, their image tokens (each from
    /// [`Self::image_tokens`], all of one length) stacked [requests, image_tokens, hidden];
    /// `shapes[r]` = (sequences, text capacity) of request `r`. One cache per request, in order.
    pub fn prefill_images(&self, image_tokens: &Tensor, shapes: &[(i64, i64)]) -> Result<Vec<KvCache>> {
        for &(_, text_capacity) in shapes {
            self.check_text_capacity(text_capacity)?;
        }
        Ok(self.encoder.prefill_images(image_tokens, shapes))
    }

    /// Like [`Self::prefill_image`], from image keys and values kept from an earlier request.
    pub fn cache_from_prefix(&self, prefix: &ImagePrefix, batch: i64, text_capacity: i64) -> Result<KvCache> {
        self.check_text_capacity(text_capacity)?;
        Ok(KvCache::from_prefix(prefix, batch, text_capacity))
    }

    /// Refuses a cache with room for more text tokens than the model has positions.
    pub fn check_text_capacity(&self, text_capacity: i64) -> Result<()> {
        let max_text = self.config.max_position_embeddings;
        if text_capacity > max_text {
            return Err(GitcapError::invalid(
                "options.max_new_tokens",
                format!("prompt + new tokens must stay within {max_text} positions, asked for {text_capacity}"),
            ));
        }
        Ok(())
    }

    /// Feeds text tokens [batch, seq] that follow what `cache` holds; returns the logits of
    /// every fed position [batch, seq, vocab] in f32.
    pub fn decode(&self, input_ids: &Tensor, cache: &mut KvCache) -> Tensor {
        let embeddings = self.embeddings.forward(&input_ids.to_device(self.device), cache.text_len());
        let hidden = self.encoder.forward_text(&embeddings, cache);
        self.output.forward(&hidden).to_kind(Kind::Float)
    }

    /// Like [`Self::decode`] but only the last position's logits [batch, vocab]: the LM head
    /// runs on one token per sequence.
    pub fn decode_last(&self, input_ids: &Tensor, cache: &mut KvCache) -> Tensor {
        let embeddings = self.embeddings.forward(&input_ids.to_device(self.device), cache.text_len());
        let hidden = self.encoder.forward_text(&embeddings, cache);
        let last = hidden.select(1, hidden.size()[1] - 1);
        self.output.forward(&last).to_kind(Kind::Float)
    }

    /// One decoding step for several requests at once: `input_ids[i]` [rows_i, 1] follows what
    /// `caches[i]` holds. Returns the logits [Σ rows_i, vocab] in f32, request after request.
    pub fn decode_step(&self, input_ids: &[Tensor], caches: &mut [&mut KvCache]) -> Tensor {
        let positions: Vec<i64> =
            caches.iter().flat_map(|c| std::iter::repeat_n(c.text_len(), c.batch() as usize)).collect();
        let ids = Tensor::cat(input_ids, 0).to_device(self.device);
        let embeddings = self.embeddings.forward_rows(&ids, &positions);
        let hidden = self.encoder.forward_step(&embeddings, caches);
        self.output.forward(&hidden.squeeze_dim(1)).to_kind(Kind::Float)
    }

    /// transformers' `GitForCausalLM(input_ids, pixel_values).logits[:, image_tokens:]` for one
    /// sequence: pixel_values [frames, 3, H, W], input_ids [1, seq] → [1, seq, vocab].
    pub fn forward(&self, pixel_values: &Tensor, input_ids: &Tensor) -> Result<Tensor> {
        let image_tokens = self.image_tokens(&self.encode_frames(pixel_values)?)?;
        let mut cache = self.prefill_image(&image_tokens, 1, input_ids.size()[1])?;
        Ok(self.decode(input_ids, &mut cache))
    }

    /// Fast mode: int8 weights (symmetric, per output channel) for the decoder's linear
    /// layers and the LM head. A head tied to the word embeddings gets its own int8 copy; the
    /// embedding lookup keeps the full-precision table. Returns the change in bytes held.
    /// `dense`: the dtype of the dense work kept beside the int8 weights (prefill, many rows);
    /// in f32 the layers keep their own weights, so a tied head then shares the table.
    pub fn quantize_int8(&mut self, dense: Kind) -> i64 {
        let table = self.embeddings.word_embeddings();
        let tied = self.output.dense_weight().is_some_and(|w| w.data_ptr() == table.data_ptr());
        let kept = if tied && dense != table.kind() { tensor_bytes(table) } else { 0 };
        self.encoder.quantize_int8(dense) + self.output.quantize_int8(dense) + kept
    }

    /// bf16 mode on a CPU: a copy of the decoder's and the LM head's weights laid out for
    /// batch-1 decoding ([`Linear::pack_for_one_row`]), which reads them at up to twice the speed
    /// of libtorch's kernels for one row. Returns the bytes added (one more copy of those
    /// weights); 0 where the loop is not vectorised.
    pub fn pack_for_one_row(&mut self) -> i64 {
        self.encoder.pack_for_one_row() + self.output.pack_for_one_row()
    }
}
