//! Decoding options, as transformers' `GenerationConfig`: read from a checkpoint's
//! `generation_config.json`, then overridden per request by the caller's
//! [`GenerationOptions`] (defined, with their range checks, in `gitcap_protocol`).

use serde::Deserialize;
use std::path::Path;

pub use gitcap_protocol::{EarlyStopping, GenerationOptions};

use crate::error::{GitcapError, Result};

/// One or several end-of-sequence ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(i64),
    Many(Vec<i64>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct GenerationConfig {
    /// Total length, prompt included, when `max_new_tokens` is unset (transformers: 20).
    pub max_length: usize,
    pub max_new_tokens: Option<usize>,
    pub min_length: usize,
    pub min_new_tokens: Option<usize>,
    pub do_sample: bool,
    pub num_beams: usize,
    pub temperature: f64,
    pub top_k: usize,
    pub top_p: f64,
    pub repetition_penalty: f64,
    pub no_repeat_ngram_size: usize,
    pub length_penalty: f64,
    pub early_stopping: EarlyStopping,
    pub bos_token_id: Option<i64>,
    #[serde(rename = "eos_token_id")]
    pub eos: Option<TokenIds>,
    pub pad_token_id: Option<i64>,
    /// Seed of the sampler; not a transformers field. `None` draws one per request.
    #[serde(skip)]
    pub seed: Option<u64>,
    /// How many of the likeliest tokens to report at each step; not a transformers field.
    #[serde(skip)]
    pub top_logprobs: usize,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_length: 20,
            max_new_tokens: None,
            min_length: 0,
            min_new_tokens: None,
            do_sample: false,
            num_beams: 1,
            temperature: 1.0,
            top_k: 50,
            top_p: 1.0,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::No,
            bos_token_id: None,
            eos: None,
            pad_token_id: None,
            seed: None,
            top_logprobs: 0,
        }
    }
}

impl GenerationConfig {
    /// Reads `generation_config.json` if the checkpoint has one; model config ids fill gaps.
    pub fn for_checkpoint(dir: &Path, bos: i64, eos: i64, pad: i64) -> Result<Self> {
        let path = dir.join("generation_config.json");
        let mut config: Self = if path.exists() {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| GitcapError::model_files(format!("cannot read {}: {e}", path.display())))?;
            serde_json::from_str(&text)
                .map_err(|e| GitcapError::model_files(format!("invalid {}: {e}", path.display())))?
        } else {
            Self::default()
        };
        config.validate().map_err(|e| GitcapError::model_files(format!("{}: {e}", path.display())))?;
        config.bos_token_id.get_or_insert(bos);
        config.pad_token_id.get_or_insert(pad);
        if config.eos.is_none() {
            config.eos = Some(TokenIds::One(eos));
        }
        Ok(config)
    }

    pub fn eos_token_ids(&self) -> Vec<i64> {
        match &self.eos {
            Some(TokenIds::One(id)) => vec![*id],
            Some(TokenIds::Many(ids)) => ids.clone(),
            None => vec![],
        }
    }

    pub fn set_eos_token_ids(&mut self, ids: Vec<i64>) {
        self.eos = Some(TokenIds::Many(ids));
    }

    /// Total sequence length (prompt included) at which generation stops.
    pub fn max_total_len(&self, prompt_len: usize) -> usize {
        match self.max_new_tokens {
            Some(n) => prompt_len + n,
            None => self.max_length,
        }
    }

    /// Checks a checkpoint's values are usable; the error names the key. (A request's options
    /// are checked by [`GenerationOptions::check`] before they reach a config.)
    fn validate(&self) -> std::result::Result<(), String> {
        if self.num_beams == 0 {
            return Err("num_beams must be at least 1".into());
        }
        if self.do_sample && !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(format!("temperature must be a positive number when sampling, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(format!("repetition_penalty must be a positive number, got {}", self.repetition_penalty));
        }
        if !self.length_penalty.is_finite() {
            return Err(format!("length_penalty must be finite, got {}", self.length_penalty));
        }
        Ok(())
    }
}

impl GenerationConfig {
    /// This config with the caller's options over it (unset options keep the config's values).
    ///
    /// The one place a request's options take effect. Every field is named (no `..`), so an
    /// option added to `GenerationOptions` and not applied here fails to compile
    /// (docs/adding-an-option.md).
    pub fn with_options(&self, options: &GenerationOptions) -> GenerationConfig {
        let GenerationOptions {
            max_new_tokens,
            min_new_tokens,
            num_beams,
            length_penalty,
            early_stopping,
            do_sample,
            temperature,
            top_k,
            top_p,
            seed,
            repetition_penalty,
            no_repeat_ngram_size,
            top_logprobs,
        } = *options;
        let c = self.clone();
        GenerationConfig {
            max_new_tokens: max_new_tokens.map(|v| v as usize).or(c.max_new_tokens),
            min_new_tokens: min_new_tokens.map(|v| v as usize).or(c.min_new_tokens),
            num_beams: num_beams.map_or(c.num_beams, |v| v as usize),
            length_penalty: length_penalty.map_or(c.length_penalty, f64::from),
            early_stopping: early_stopping.unwrap_or(c.early_stopping),
            do_sample: do_sample.unwrap_or(c.do_sample),
            temperature: temperature.map_or(c.temperature, f64::from),
            top_k: top_k.map_or(c.top_k, |v| v as usize),
            top_p: top_p.map_or(c.top_p, f64::from),
            seed: seed.or(c.seed),
            repetition_penalty: repetition_penalty.map_or(c.repetition_penalty, f64::from),
            no_repeat_ngram_size: no_repeat_ngram_size.map_or(c.no_repeat_ngram_size, |v| v as usize),
            top_logprobs: top_logprobs.map_or(c.top_logprobs, |v| v as usize),
            ..c
        }
    }

    /// Whether this config runs beam search (the request's `num_beams`, else the checkpoint's).
    pub fn is_beam_search(&self) -> bool {
        self.num_beams > 1
    }
}
