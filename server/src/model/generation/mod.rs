//! Text generation with the options of transformers' `generate`: greedy, sampling and beam
//! search, with its logits processors.

mod beam;
pub mod config;
pub mod processors;
mod search;

pub use config::{EarlyStopping, GenerationConfig, GenerationOptions};

use tch::Tensor;

use crate::error::{GitcapError, Result};
use crate::model::KvCache;

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FinishReason {
    /// The model produced an end-of-sequence token (it is the last generated id).
    Eos,
    /// The length limit was reached.
    #[default]
    Length,
}

/// One token, as it is chosen (greedy, sampling) or once the best beam is known.
#[derive(Debug, Clone)]
pub struct TokenStep {
    pub token_id: i64,
    /// Log-probability of the token under the distribution it was chosen from.
    pub logprob: f32,
    /// No token follows this one.
    pub last: bool,
    /// The likeliest tokens of that distribution and their log-probabilities, most likely first,
    /// when the config asks for them (`top_logprobs`); empty otherwise.
    pub top: Vec<(i64, f32)>,
}

/// What the token callback tells the generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepControl {
    Continue,
    /// The caller went away or its deadline passed: stop at this step.
    Stop,
}

/// Generated ids after the prompt (EOS included when produced).
#[derive(Debug, Clone, Default)]
pub struct Generated {
    pub token_ids: Vec<i64>,
    pub logprobs: Vec<f32>,
    pub finish_reason: FinishReason,
}

/// One request's search, advanced one decoding step at a time, so that the engine can run
/// the decoder for many requests at once: greedy or sampling on one row, or beam search on
/// `num_beams` rows.
pub enum Search {
    Sample(search::SampleSearch),
    Beam(beam::BeamSearch),
}

impl Search {
    /// The search for a continuation of `prompt` (ids, [CLS] first) with `config`, whose values
    /// crate::service::validation has checked; what only the prompt can tell is checked here.
    pub fn new(config: &GenerationConfig, prompt: &[i64]) -> Result<Self> {
        if prompt.is_empty() {
            return Err(GitcapError::invalid("prompt", "the prompt needs at least the BOS ([CLS]) token"));
        }
        let max_total = config.max_total_len(prompt.len());
        if max_total <= prompt.len() {
            return Err(GitcapError::invalid(
                "options.max_new_tokens",
                format!(
                    "leaves no room to generate: the prompt has {} tokens and the length limit is {max_total}",
                    prompt.len()
                ),
            ));
        }
        Ok(if config.num_beams > 1 {
            Search::Beam(beam::BeamSearch::new(config, prompt))
        } else {
            Search::Sample(search::SampleSearch::new(config, prompt))
        })
    }

    /// Decoder rows (sequences) this search runs on.
    pub fn rows(&self) -> usize {
        match self {
            Search::Sample(_) => 1,
            Search::Beam(b) => b.rows(),
        }
    }

    /// Text positions each row's cache needs: prompt and generated tokens.
    pub fn text_capacity(&self) -> usize {
        match self {
            Search::Sample(s) => s.text_capacity(),
            Search::Beam(b) => b.text_capacity(),
        }
    }

    /// The ids to feed next [rows, seq]: the prompt at first, then one token per row.
    pub fn next_input(&self) -> Tensor {
        match self {
            Search::Sample(s) => s.next_input(),
            Search::Beam(b) => b.next_input(),
        }
    }

    /// Advances the search with the logits of the fed ids' last position [rows, vocab]
    /// (f32, CPU), calling `on_token` with each generated token as it is chosen, or with
    /// `None` after a step that fixed no token yet (beam search), so the caller can stop the
    /// generation at every step. Returns the result once generation has ended.
    pub fn step(
        &mut self,
        logits: &Tensor,
        cache: &mut KvCache,
        on_token: &mut dyn FnMut(Option<TokenStep>) -> StepControl,
    ) -> Result<Option<Generated>> {
        match self {
            Search::Sample(s) => s.step(logits, on_token),
            Search::Beam(b) => b.step(logits, cache, on_token),
        }
    }
}
