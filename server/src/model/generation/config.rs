//! Decoding options, as transformers' `GenerationConfig`: read from a checkpoint's
//! `generation_config.json`, then overridden per request.

use serde::Deserialize;
use std::path::Path;

use crate::error::{GitcapError, Result};

/// `early_stopping` of beam search: `true`, `false` or `"never"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EarlyStopping {
    /// Stop as soon as `num_beams` hypotheses are finished.
    Yes,
    /// Stop when the best running beam, at its current length, cannot beat the finished ones.
    #[default]
    No,
    /// The canonical beam search: stop only when no running beam could ever win.
    Never,
}

impl<'de> Deserialize<'de> for EarlyStopping {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Bool(true) => Ok(Self::Yes),
            serde_json::Value::Bool(false) | serde_json::Value::Null => Ok(Self::No),
            serde_json::Value::String(s) if s == "never" => Ok(Self::Never),
            other => {
                Err(serde::de::Error::custom(format!("early_stopping must be true, false or \"never\", got {other}")))
            }
        }
    }
}

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

    /// Checks the options are in range; `field` prefixes the names in errors.
    pub fn validate(&self, field: &str) -> Result<()> {
        let bad = |name: &str, msg: String| Err(GitcapError::invalid(format!("{field}.{name}"), msg));
        if self.num_beams == 0 {
            return bad("num_beams", "must be at least 1".into());
        }
        if self.do_sample && !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return bad("temperature", format!("must be a positive number when sampling, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("must be in (0, 1], got {}", self.top_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad("repetition_penalty", format!("must be a positive number, got {}", self.repetition_penalty));
        }
        if !self.length_penalty.is_finite() {
            return bad("length_penalty", format!("must be finite, got {}", self.length_penalty));
        }
        if let (Some(min), Some(max)) = (self.min_new_tokens, self.max_new_tokens) {
            if min > max {
                return bad("min_new_tokens", format!("{min} is more than max_new_tokens {max}"));
            }
        }
        Ok(())
    }
}

/// Per-request overrides of a checkpoint's [`GenerationConfig`]; `None` keeps its value.
#[derive(Debug, Clone, Default)]
pub struct GenerationOverrides {
    pub max_new_tokens: Option<usize>,
    pub min_new_tokens: Option<usize>,
    pub num_beams: Option<usize>,
    pub length_penalty: Option<f64>,
    pub early_stopping: Option<EarlyStopping>,
    pub do_sample: Option<bool>,
    pub temperature: Option<f64>,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    pub repetition_penalty: Option<f64>,
    pub no_repeat_ngram_size: Option<usize>,
}

impl GenerationOverrides {
    pub fn apply(&self, base: &GenerationConfig) -> GenerationConfig {
        let mut c = base.clone();
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { c.$field = v; } )* };
        }
        set!(
            num_beams,
            length_penalty,
            early_stopping,
            do_sample,
            temperature,
            top_k,
            top_p,
            repetition_penalty,
            no_repeat_ngram_size
        );
        if self.max_new_tokens.is_some() {
            c.max_new_tokens = self.max_new_tokens;
        }
        if self.min_new_tokens.is_some() {
            c.min_new_tokens = self.min_new_tokens;
        }
        if self.seed.is_some() {
            c.seed = self.seed;
        }
        c
    }
}
