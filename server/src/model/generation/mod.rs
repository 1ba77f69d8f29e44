//! Text generation with the options of transformers' `generate`: greedy, sampling and beam
//! search, with its logits processors.

mod beam;
pub mod config;
pub mod processors;
mod search;

pub use config::{EarlyStopping, GenerationConfig, GenerationOverrides};

use tch::Tensor;

use crate::error::{GitcapError, Result};
use crate::model::GitForCausalLM;

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
#[derive(Debug, Clone, Copy)]
pub struct TokenStep {
    pub token_id: i64,
    /// Log-probability of the token under the distribution it was chosen from.
    pub logprob: f32,
    /// No token follows this one.
    pub last: bool,
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

/// Generates a continuation of `prompt` (ids, [CLS] first) after `image_tokens`
/// ([`GitForCausalLM::image_tokens`]), calling `on_token` with each generated token as it is
/// chosen, or with `None` after a search step that fixed no token yet (beam search), so the
/// caller can stop the generation at every step.
pub fn generate(
    model: &GitForCausalLM,
    image_tokens: &Tensor,
    prompt: &[i64],
    config: &GenerationConfig,
    on_token: &mut dyn FnMut(Option<TokenStep>) -> StepControl,
) -> Result<Generated> {
    config.validate("options")?;
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
    let _guard = tch::no_grad_guard();
    if config.num_beams > 1 {
        beam::beam_search(model, image_tokens, prompt, config, on_token)
    } else {
        search::greedy_or_sample(model, image_tokens, prompt, config, on_token)
    }
}
