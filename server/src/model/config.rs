//! `config.json` of a GIT checkpoint, with the field names and defaults of transformers'
//! `GitConfig` / `GitVisionConfig`.

use serde::Deserialize;
use std::path::Path;

use crate::error::{GitcapError, Result};

/// The CLIP vision tower's configuration (`vision_config` in `config.json`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct GitVisionConfig {
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_channels: i64,
    pub image_size: i64,
    pub patch_size: i64,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
}

impl Default for GitVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 16,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

impl GitVisionConfig {
    /// Tokens one image becomes: one per patch plus the class token.
    pub fn tokens_per_image(&self) -> i64 {
        (self.image_size / self.patch_size).pow(2) + 1
    }
}

/// The whole model's configuration (`config.json`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct GitConfig {
    pub vision_config: GitVisionConfig,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub hidden_act: String,
    pub max_position_embeddings: i64,
    pub layer_norm_eps: f64,
    pub pad_token_id: i64,
    pub bos_token_id: i64,
    pub eos_token_id: i64,
    /// Frames per video for video checkpoints (6 for git-base-vatex); `None` for image models.
    pub num_image_with_embedding: Option<i64>,
    pub tie_word_embeddings: bool,
}

impl Default for GitConfig {
    fn default() -> Self {
        Self {
            vision_config: GitVisionConfig::default(),
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 6,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            max_position_embeddings: 1024,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            bos_token_id: 101,
            eos_token_id: 102,
            num_image_with_embedding: None,
            tie_word_embeddings: false,
        }
    }
}

impl GitConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| GitcapError::model_files(format!("cannot read {}: {e}", path.display())))?;
        let config: Self = serde_json::from_str(&text)
            .map_err(|e| GitcapError::model_files(format!("invalid {}: {e}", path.display())))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        let v = &self.vision_config;
        let problems = [
            (self.hidden_size % self.num_attention_heads != 0, "hidden_size is not a multiple of num_attention_heads"),
            (
                v.hidden_size % v.num_attention_heads != 0,
                "vision hidden_size is not a multiple of its num_attention_heads",
            ),
            (v.image_size % v.patch_size != 0, "vision image_size is not a multiple of patch_size"),
        ];
        match problems.iter().find(|(bad, _)| *bad) {
            Some((_, why)) => Err(GitcapError::model_files(format!("config.json: {why}"))),
            None => Ok(()),
        }
    }

    /// Frames the checkpoint was trained with: 1 for image models.
    pub fn max_frames(&self) -> i64 {
        self.num_image_with_embedding.unwrap_or(1)
    }

    pub fn is_video(&self) -> bool {
        self.num_image_with_embedding.is_some()
    }
}
