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
use crate::model::KvCache;

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

pub struct BeamSearch {
    num_beams: usize,
    prompt_len: usize,
    max_total: usize,
    eos: Vec<i64>,
    keep: usize,
    length_penalty: f64,
    early_stopping: EarlyStopping,
    do_sample: bool,
    processors: LogitsProcessors,
    rng: ChaCha8Rng,
    running: Vec<Vec<i64>>,
    running_logprobs: Vec<Vec<f32>>,
    running_scores: Vec<f32>,
    finished: Vec<Finished>,
    improvement_possible: bool,
    cur_len: usize,
}

impl BeamSearch {
    pub fn new(config: &GenerationConfig, prompt: &[i64]) -> Self {
        let num_beams = config.num_beams;
        let eos = config.eos_token_ids();
        let empty = Finished { score: NEG, sequence: vec![], logprobs: vec![], done: false };
        Self {
            num_beams,
            prompt_len: prompt.len(),
            max_total: config.max_total_len(prompt.len()),
            keep: 2.max(1 + eos.len()) * num_beams,
            eos,
            length_penalty: config.length_penalty,
            early_stopping: config.early_stopping,
            do_sample: config.do_sample,
            processors: LogitsProcessors::new(config, prompt.len()),
            rng: ChaCha8Rng::seed_from_u64(config.seed.unwrap_or_else(rand::random)),
            running: vec![prompt.to_vec(); num_beams],
            running_logprobs: vec![vec![]; num_beams],
            running_scores: (0..num_beams).map(|b| if b == 0 { 0.0 } else { NEG }).collect(),
            finished: vec![empty; num_beams],
            improvement_possible: true,
            cur_len: prompt.len(),
        }
    }

    pub fn rows(&self) -> usize {
        self.num_beams
    }

    pub fn text_capacity(&self) -> usize {
        self.max_total
    }

    /// The ids to feed next [beams, seq]: the prompt on every beam first, then each beam's
    /// last token.
    pub fn next_input(&self) -> Tensor {
        if self.cur_len == self.prompt_len {
            Tensor::from_slice(&self.running[0]).view([1, -1]).repeat([self.num_beams as i64, 1])
        } else {
            let tokens: Vec<i64> = self.running.iter().map(|s| *s.last().expect("beams are never empty")).collect();
            Tensor::from_slice(&tokens).view([-1, 1])
        }
    }

    /// One search step from the beams' last-position `logits` [beams, vocab] (f32, CPU);
    /// reorders `cache` to the surviving beams. Returns the best hypothesis once the search
    /// has ended, after streaming its tokens to `on_token`.
    pub fn step(
        &mut self,
        logits: &Tensor,
        cache: &mut KvCache,
        on_token: &mut dyn FnMut(Option<TokenStep>) -> StepControl,
    ) -> Result<Option<Generated>> {
        let (num_beams, prompt_len, max_total, lp) =
            (self.num_beams, self.prompt_len, self.max_total, self.length_penalty);
        let token_log_probs = logits.log_softmax(-1, Kind::Float);
        let processed = self.processors.process(&self.running, &token_log_probs);
        let vocab = processed.size()[1];
        let accumulated = (&processed + Tensor::from_slice(&self.running_scores).view([-1, 1])).view([-1]);
        let (values, indices) = if self.do_sample {
            sample_without_replacement(&accumulated, self.keep, &mut self.rng)?
        } else {
            let (v, i) = accumulated.topk(self.keep as i64, -1, true, true);
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
                    hits_stop: self.eos.contains(&token) || self.cur_len + 1 >= max_total,
                }
            })
            .collect();
        let step_logprob = |c: &Candidate| token_log_probs.double_value(&[c.beam as i64, c.token]) as f32;

        // Finished hypotheses: only the top `num_beams` candidates may finish.
        let all_done = self.finished.iter().all(|f| f.done);
        let generated_len = (self.cur_len + 1 - prompt_len) as f64;
        let mut merged: Vec<Finished> = self.finished.clone();
        for (i, c) in candidates.iter().enumerate() {
            let just_finished = c.hits_stop && i < num_beams;
            let mut score = c.score / generated_len.powf(lp) as f32;
            if all_done && self.early_stopping == EarlyStopping::Yes {
                score += NEG;
            }
            if !self.improvement_possible {
                score += NEG;
            }
            if !just_finished {
                score += NEG;
            }
            let mut sequence = self.running[c.beam].clone();
            sequence.push(c.token);
            let mut logprobs = self.running_logprobs[c.beam].clone();
            logprobs.push(step_logprob(c));
            merged.push(Finished { score, sequence, logprobs, done: just_finished });
        }
        self.finished = top_by_score(merged, num_beams, |f| f.score);

        // Running beams: the best candidates that did not stop.
        let ranked: Vec<(f32, &Candidate)> =
            candidates.iter().map(|c| (c.score + if c.hits_stop { NEG } else { 0.0 }, c)).collect();
        let next = top_by_score(ranked, num_beams, |(score, _)| *score);
        let source: Vec<i64> = next.iter().map(|(_, c)| c.beam as i64).collect();
        self.running = next.iter().map(|(_, c)| [self.running[c.beam].as_slice(), &[c.token]].concat()).collect();
        self.running_logprobs =
            next.iter().map(|(_, c)| [self.running_logprobs[c.beam].as_slice(), &[step_logprob(c)]].concat()).collect();
        self.running_scores = next.iter().map(|(score, _)| *score).collect();
        cache.reorder(&Tensor::from_slice(&source));
        self.cur_len += 1;

        let best_len = if self.early_stopping == EarlyStopping::Never && lp > 0.0 {
            max_total - prompt_len
        } else {
            self.cur_len - prompt_len
        };
        let best_possible = self.running_scores[0] / (best_len as f64).powf(lp) as f32;
        let worst_finished = self.finished.iter().map(|f| f.score).fold(f32::INFINITY, f32::min);
        self.improvement_possible &=
            self.finished.iter().any(|f| best_possible > if f.done { worst_finished } else { NEG });

        let open_beam = !(self.finished.iter().all(|f| f.done) && self.early_stopping == EarlyStopping::Yes);
        let can_continue = !candidates.iter().all(|c| c.hits_stop);
        if self.improvement_possible && open_beam && can_continue {
            // Tokens are only known at the end; callers still get to stop the search each step.
            if on_token(None) == StepControl::Stop {
                return Err(GitcapError::Cancelled);
            }
            return Ok(None);
        }
        self.finish(on_token).map(Some)
    }

    fn finish(&mut self, on_token: &mut dyn FnMut(Option<TokenStep>) -> StepControl) -> Result<Generated> {
        let best = std::mem::take(&mut self.finished)
            .into_iter()
            .next()
            .filter(|f| f.done)
            .ok_or_else(|| GitcapError::Internal("beam search finished no hypothesis".into()))?;
        let token_ids = best.sequence[self.prompt_len..].to_vec();
        let finish_reason = if token_ids.last().is_some_and(|t| self.eos.contains(t)) {
            FinishReason::Eos
        } else {
            FinishReason::Length
        };
        for (i, (&token_id, &logprob)) in token_ids.iter().zip(&best.logprobs).enumerate() {
            let last = i + 1 == token_ids.len();
            if on_token(Some(TokenStep { token_id, logprob, last, top: Vec::new() })) == StepControl::Stop {
                return Err(GitcapError::Cancelled);
            }
        }
        Ok(Generated { token_ids, logprobs: best.logprobs, finish_reason })
    }
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
