//! Beam search, step for step as transformers 5's vectorised `_beam_search` (batch of one
//! request): keep the best `2 × num_beams` continuations, finish those that end in EOS or hit
//! the length limit, continue the best `num_beams` others, and stop per `early_stopping`.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use super::config::{EarlyStopping, GenerationConfig};
use super::processors::LogitsProcessors;
use super::{FinishReason, Generated, StepControl, TokenStep};
use crate::error::{GitcapError, Result};
use crate::model::GitForCausalLM;

/// transformers marks impossible beams with this score.
const NEG: f32 = -1.0e9;

/// A finished-hypothesis slot; slots start empty with score `NEG`.
#[derive(Clone)]
struct Finished {
    score: f32,
    sequence: Vec<i64>,
    logprobs: Vec<f32>,
    done: bool,
}

struct Candidate {
    score: f32,
    beam: usize,
    token: i64,
    hits_stop: bool,
}

pub fn beam_search(
    model: &GitForCausalLM,
    image_tokens: &Tensor,
    prompt: &[i64],
    config: &GenerationConfig,
    on_token: &mut dyn FnMut(Option<TokenStep>) -> StepControl,
) -> Result<Generated> {
    let num_beams = config.num_beams;
    let prompt_len = prompt.len();
    let max_total = config.max_total_len(prompt_len);
    let eos = config.eos_token_ids();
    let keep = 2.max(1 + eos.len()) * num_beams;
    let lp = config.length_penalty;
    let processors = LogitsProcessors::new(config, prompt_len);
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed.unwrap_or_else(rand::random));
    let mut cache = model.prefill_image(image_tokens, num_beams as i64, max_total as i64)?;

    let mut running: Vec<Vec<i64>> = vec![prompt.to_vec(); num_beams];
    let mut running_logprobs: Vec<Vec<f32>> = vec![vec![]; num_beams];
    let mut running_scores: Vec<f32> = (0..num_beams).map(|b| if b == 0 { 0.0 } else { NEG }).collect();
    let empty = Finished { score: NEG, sequence: vec![], logprobs: vec![], done: false };
    let mut finished = vec![empty; num_beams];
    let mut improvement_possible = true;
    let mut cur_len = prompt_len;
    let mut next_input = Tensor::from_slice(prompt).view([1, -1]).repeat([num_beams as i64, 1]);

    loop {
        let logits = model.decode_last(&next_input, &mut cache).to_device(tch::Device::Cpu);
        let token_log_probs = logits.log_softmax(-1, Kind::Float);
        let processed = processors.process(&running, &token_log_probs);
        let vocab = processed.size()[1];
        let accumulated = (&processed + Tensor::from_slice(&running_scores).view([-1, 1])).view([-1]);
        let (values, indices) = if config.do_sample {
            sample_without_replacement(&accumulated, keep, &mut rng)?
        } else {
            let (v, i) = accumulated.topk(keep as i64, -1, true, true);
            (to_vec::<f32>(&v)?, to_vec::<i64>(&i)?)
        };
        let candidates: Vec<Candidate> = values
            .iter()
            .zip(&indices)
            .map(|(&score, &index)| {
                let token = index % vocab;
                Candidate {
                    score,
                    beam: (index / vocab) as usize,
                    token,
                    hits_stop: eos.contains(&token) || cur_len + 1 >= max_total,
                }
            })
            .collect();
        let step_logprob = |c: &Candidate| token_log_probs.double_value(&[c.beam as i64, c.token]) as f32;

        // Finished hypotheses: only the top `num_beams` candidates may finish.
        let all_done = finished.iter().all(|f| f.done);
        let generated_len = (cur_len + 1 - prompt_len) as f64;
        let mut merged: Vec<Finished> = finished.clone();
        for (i, c) in candidates.iter().enumerate() {
            let just_finished = c.hits_stop && i < num_beams;
            let mut score = c.score / generated_len.powf(lp) as f32;
            if all_done && config.early_stopping == EarlyStopping::Yes {
                score += NEG;
            }
            if !improvement_possible {
                score += NEG;
            }
            if !just_finished {
                score += NEG;
            }
            let mut sequence = running[c.beam].clone();
            sequence.push(c.token);
            let mut logprobs = running_logprobs[c.beam].clone();
            logprobs.push(step_logprob(c));
            merged.push(Finished { score, sequence, logprobs, done: just_finished });
        }
        finished = top_by_score(merged, num_beams, |f| f.score);

        // Running beams: the best candidates that did not stop.
        let ranked: Vec<(f32, &Candidate)> =
            candidates.iter().map(|c| (c.score + if c.hits_stop { NEG } else { 0.0 }, c)).collect();
        let next = top_by_score(ranked, num_beams, |(score, _)| *score);
        let source: Vec<i64> = next.iter().map(|(_, c)| c.beam as i64).collect();
        running = next.iter().map(|(_, c)| [running[c.beam].as_slice(), &[c.token]].concat()).collect();
        running_logprobs =
            next.iter().map(|(_, c)| [running_logprobs[c.beam].as_slice(), &[step_logprob(c)]].concat()).collect();
        running_scores = next.iter().map(|(score, _)| *score).collect();
        cache.reorder(&Tensor::from_slice(&source));
        cur_len += 1;

        let best_len = if config.early_stopping == EarlyStopping::Never && lp > 0.0 {
            max_total - prompt_len
        } else {
            cur_len - prompt_len
        };
        let best_possible = running_scores[0] / (best_len as f64).powf(lp) as f32;
        let worst_finished = finished.iter().map(|f| f.score).fold(f32::INFINITY, f32::min);
        improvement_possible &= finished.iter().any(|f| best_possible > if f.done { worst_finished } else { NEG });

        let open_beam = !(finished.iter().all(|f| f.done) && config.early_stopping == EarlyStopping::Yes);
        let can_continue = !candidates.iter().all(|c| c.hits_stop);
        if !(improvement_possible && open_beam && can_continue) {
            break;
        }
        // Tokens are only known at the end; callers still get to stop the search each step.
        if on_token(None) == StepControl::Stop {
            return Err(GitcapError::Cancelled);
        }
        let tokens: Vec<i64> = running.iter().map(|s| *s.last().expect("beams are never empty")).collect();
        next_input = Tensor::from_slice(&tokens).view([-1, 1]);
    }

    let best = finished
        .into_iter()
        .next()
        .filter(|f| f.done)
        .ok_or_else(|| GitcapError::Internal("beam search finished no hypothesis".into()))?;
    let token_ids = best.sequence[prompt_len..].to_vec();
    let finish_reason =
        if token_ids.last().is_some_and(|t| eos.contains(t)) { FinishReason::Eos } else { FinishReason::Length };
    for (i, (&token_id, &logprob)) in token_ids.iter().zip(&best.logprobs).enumerate() {
        let last = i + 1 == token_ids.len();
        if on_token(Some(TokenStep { token_id, logprob, last })) == StepControl::Stop {
            return Err(GitcapError::Cancelled);
        }
    }
    Ok(Generated { token_ids, logprobs: best.logprobs, finish_reason })
}

/// The `k` items with the highest scores, highest first; ties keep their original order.
fn top_by_score<T>(mut items: Vec<T>, k: usize, score: impl Fn(&T) -> f32) -> Vec<T> {
    items.sort_by(|a, b| score(b).total_cmp(&score(a)));
    items.truncate(k);
    items
}

/// transformers' beam sampling: `k` draws without replacement from softmax(accumulated),
/// sorted by accumulated score.
fn sample_without_replacement(accumulated: &Tensor, k: usize, rng: &mut ChaCha8Rng) -> Result<(Vec<f32>, Vec<i64>)> {
    let scores = to_vec::<f32>(accumulated)?;
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut weights: Vec<f64> = scores.iter().map(|&s| ((s - max) as f64).exp()).collect();
    let mut picked = Vec::with_capacity(k);
    for _ in 0..k {
        let total: f64 = weights.iter().sum();
        if total <= 0.0 || total.is_nan() {
            break;
        }
        let mut target = rng.random::<f64>() * total;
        let index = weights.iter().position(|&w| {
            target -= w;
            target < 0.0 && w > 0.0
        });
        let index = index.unwrap_or_else(|| weights.iter().rposition(|&w| w > 0.0).unwrap_or(0));
        weights[index] = 0.0;
        picked.push(index);
    }
    picked.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    Ok((picked.iter().map(|&i| scores[i]).collect(), picked.iter().map(|&i| i as i64).collect()))
}

fn to_vec<T: tch::kind::Element>(t: &Tensor) -> Result<Vec<T>> {
    let flat = t.contiguous().view([-1]);
    let mut out = vec![T::ZERO; flat.numel()];
    flat.f_copy_data(&mut out, flat.numel()).map_err(|e| GitcapError::Internal(format!("reading tensor: {e}")))?;
    Ok(out)
}
