//! Greedy decoding and sampling (transformers' `_sample`) for one sequence, one step at a
//! time, streaming each token to a callback as soon as it is chosen.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use super::config::GenerationConfig;
use super::processors::LogitsProcessors;
use super::{FinishReason, Generated, StepControl, TokenStep};
use crate::error::{GitcapError, Result};

pub struct SampleSearch {
    do_sample: bool,
    max_total: usize,
    eos: Vec<i64>,
    processors: LogitsProcessors,
    top_logprobs: usize,
    rng: ChaCha8Rng,
    prompt_len: usize,
    /// Prompt and generated ids.
    sequence: Vec<i64>,
    generated: Generated,
}

impl SampleSearch {
    pub fn new(config: &GenerationConfig, prompt: &[i64]) -> Self {
        Self {
            do_sample: config.do_sample,
            max_total: config.max_total_len(prompt.len()),
            eos: config.eos_token_ids(),
            processors: LogitsProcessors::new(config, prompt.len()),
            top_logprobs: config.top_logprobs,
            rng: ChaCha8Rng::seed_from_u64(config.seed.unwrap_or_else(rand::random)),
            prompt_len: prompt.len(),
            sequence: prompt.to_vec(),
            generated: Generated::default(),
        }
    }

    pub fn text_capacity(&self) -> usize {
        self.max_total.max(self.prompt_len)
    }

    /// The ids to feed next [1, seq]: the whole prompt first, then the last chosen token.
    pub fn next_input(&self) -> Tensor {
        if self.sequence.len() == self.prompt_len {
            Tensor::from_slice(&self.sequence).view([1, -1])
        } else {
            Tensor::from_slice(&self.sequence[self.sequence.len() - 1..]).view([1, 1])
        }
    }

    /// Chooses the next token from the last position's `logits` [1, vocab] (f32, CPU);
    /// returns the result once generation has ended.
    pub fn step(
        &mut self,
        logits: &Tensor,
        on_token: &mut dyn FnMut(Option<TokenStep>) -> StepControl,
    ) -> Result<Option<Generated>> {
        let scores = self.processors.process(std::slice::from_ref(&self.sequence), logits);
        let log_probs = scores.log_softmax(-1, Kind::Float).view([-1]);
        let token = if self.do_sample {
            sample(&log_probs, &mut self.rng)?
        } else {
            scores.view([-1]).argmax(0, false).int64_value(&[])
        };
        let logprob = log_probs.double_value(&[token]) as f32;
        let top = top_logprobs(&log_probs, self.top_logprobs);
        self.sequence.push(token);
        self.generated.token_ids.push(token);
        self.generated.logprobs.push(logprob);
        if self.eos.contains(&token) {
            self.generated.finish_reason = FinishReason::Eos;
            on_token(Some(TokenStep { token_id: token, logprob, last: true, top }));
            return Ok(Some(std::mem::take(&mut self.generated)));
        }
        let last = self.sequence.len() >= self.max_total;
        if on_token(Some(TokenStep { token_id: token, logprob, last, top })) == StepControl::Stop {
            return Err(GitcapError::Cancelled);
        }
        if last {
            self.generated.finish_reason = FinishReason::Length;
            return Ok(Some(std::mem::take(&mut self.generated)));
        }
        Ok(None)
    }
}

/// The `k` likeliest tokens of `log_probs` [vocab] with their log-probabilities, most likely first.
fn top_logprobs(log_probs: &Tensor, k: usize) -> Vec<(i64, f32)> {
    if k == 0 {
        return Vec::new();
    }
    let (values, ids) = log_probs.topk(k as i64, -1, true, true);
    let values: Vec<f32> = Vec::try_from(values).unwrap_or_default();
    let ids: Vec<i64> = Vec::try_from(ids).unwrap_or_default();
    ids.into_iter().zip(values).collect()
}

/// Draws a token from the distribution `log_probs` [vocab] (−inf where filtered out).
fn sample(log_probs: &Tensor, rng: &mut ChaCha8Rng) -> Result<i64> {
    let probs: Vec<f32> =
        Vec::try_from(log_probs.exp()).map_err(|e| GitcapError::Internal(format!("reading probabilities: {e}")))?;
    let total: f64 = probs.iter().map(|&p| p as f64).sum();
    if !(total > 0.0 && total.is_finite()) {
        return Err(GitcapError::Internal("no token has a finite probability".into()));
    }
    let mut target = rng.random::<f64>() * total;
    let mut last_possible = 0;
    for (id, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            last_possible = id;
            target -= p as f64;
            if target < 0.0 {
                return Ok(id as i64);
            }
        }
    }
    Ok(last_possible as i64)
}
