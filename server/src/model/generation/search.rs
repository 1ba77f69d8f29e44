//! Greedy decoding and sampling (transformers' `_sample`), one sequence, streaming each
//! token to a callback as soon as it is chosen.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use super::config::GenerationConfig;
use super::processors::LogitsProcessors;
use super::{FinishReason, Generated, StepControl, TokenStep};
use crate::error::{GitcapError, Result};
use crate::model::GitForCausalLM;

pub fn greedy_or_sample(
    model: &GitForCausalLM,
    image_tokens: &Tensor,
    prompt: &[i64],
    config: &GenerationConfig,
    on_token: &mut dyn FnMut(Option<TokenStep>) -> StepControl,
) -> Result<Generated> {
    let max_total = config.max_total_len(prompt.len());
    let eos = config.eos_token_ids();
    let processors = LogitsProcessors::new(config, prompt.len());
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed.unwrap_or_else(rand::random));
    let mut cache = model.prefill_image(image_tokens, 1, max_total.max(prompt.len()) as i64)?;

    let mut sequence = prompt.to_vec();
    let mut generated = Generated::default();
    let mut next_input = Tensor::from_slice(prompt).view([1, -1]);
    while sequence.len() < max_total {
        let logits = model.decode_last(&next_input, &mut cache).to_device(tch::Device::Cpu);
        let scores = processors.process(std::slice::from_ref(&sequence), &logits);
        let log_probs = scores.log_softmax(-1, Kind::Float).view([-1]);
        let token = if config.do_sample {
            sample(&log_probs, &mut rng)?
        } else {
            scores.view([-1]).argmax(0, false).int64_value(&[])
        };
        let logprob = log_probs.double_value(&[token]) as f32;
        sequence.push(token);
        generated.token_ids.push(token);
        generated.logprobs.push(logprob);
        if eos.contains(&token) {
            generated.finish_reason = FinishReason::Eos;
            on_token(Some(TokenStep { token_id: token, logprob, last: true }));
            return Ok(generated);
        }
        let last = sequence.len() >= max_total;
        if on_token(Some(TokenStep { token_id: token, logprob, last })) == StepControl::Stop {
            return Err(GitcapError::Cancelled);
        }
        next_input = Tensor::from_slice(&[token]).view([1, 1]);
    }
    generated.finish_reason = FinishReason::Length;
    Ok(generated)
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
