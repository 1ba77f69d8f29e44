//! transformers' logits processors, applied in its order: repetition penalty, no-repeat
//! n-grams, min length, min new tokens; then, when sampling, temperature, top-k and top-p.

use std::collections::{HashMap, HashSet};

use tch::{Kind, Tensor};

use super::config::GenerationConfig;

/// The processors one request needs, built once per request.
pub struct LogitsProcessors {
    repetition_penalty: f64,
    no_repeat_ngram_size: usize,
    min_length: usize,
    min_new_tokens: usize,
    prompt_len: usize,
    eos: Vec<i64>,
    sampling: Option<(f64, usize, f64)>,
    min_tokens_to_keep: usize,
}

impl LogitsProcessors {
    pub fn new(config: &GenerationConfig, prompt_len: usize) -> Self {
        let eos = config.eos_token_ids();
        Self {
            repetition_penalty: config.repetition_penalty,
            no_repeat_ngram_size: config.no_repeat_ngram_size,
            min_length: config.min_length,
            min_new_tokens: config.min_new_tokens.unwrap_or(0),
            prompt_len,
            sampling: config.do_sample.then_some((config.temperature, config.top_k, config.top_p)),
            // Beam sampling must keep a non-EOS continuation alive.
            min_tokens_to_keep: if config.num_beams > 1 { eos.len() + 1 } else { 1 },
            eos,
        }
    }

    /// Processes `scores` [rows, vocab] (f32) for the sequences `rows` (prompt included).
    pub fn process(&self, sequences: &[Vec<i64>], scores: &Tensor) -> Tensor {
        let mut scores = scores.copy();
        if self.repetition_penalty != 1.0 {
            scores = self.apply_repetition_penalty(sequences, &scores);
        }
        if self.no_repeat_ngram_size > 0 {
            for (row, seq) in sequences.iter().enumerate() {
                let banned = banned_ngram_tokens(seq, self.no_repeat_ngram_size);
                if !banned.is_empty() {
                    let _ = scores.get(row as i64).index_fill_(
                        0,
                        &Tensor::from_slice(&banned).to(scores.device()),
                        f64::NEG_INFINITY,
                    );
                }
            }
        }
        let len = sequences.first().map_or(0, Vec::len);
        let below_min = len < self.min_length || len - self.prompt_len.min(len) < self.min_new_tokens;
        if below_min && !self.eos.is_empty() {
            let eos = Tensor::from_slice(&self.eos).to(scores.device());
            let _ = scores.index_fill_(1, &eos, f64::NEG_INFINITY);
        }
        if let Some((temperature, top_k, top_p)) = self.sampling {
            scores = self.warp(scores, temperature, top_k, top_p);
        }
        scores
    }

    fn apply_repetition_penalty(&self, sequences: &[Vec<i64>], scores: &Tensor) -> Tensor {
        let rows: Vec<Tensor> = sequences
            .iter()
            .enumerate()
            .map(|(row, seq)| {
                let ids = Tensor::from_slice(seq).to(scores.device());
                let row_scores = scores.get(row as i64);
                let picked = row_scores.gather(0, &ids, false);
                let penalized = (&picked * self.repetition_penalty)
                    .where_self(&picked.lt(0.0), &(&picked / self.repetition_penalty));
                row_scores.scatter(0, &ids, &penalized)
            })
            .collect();
        Tensor::stack(&rows, 0)
    }

    fn warp(&self, scores: Tensor, temperature: f64, top_k: usize, top_p: f64) -> Tensor {
        let mut scores = if temperature != 1.0 { scores / temperature } else { scores };
        let vocab = scores.size()[1];
        if top_k > 0 {
            let k = (top_k.max(self.min_tokens_to_keep) as i64).min(vocab);
            let (top, _) = scores.topk(k, -1, true, true);
            let kth = top.narrow(1, k - 1, 1);
            scores = scores.masked_fill(&scores.lt_tensor(&kth), f64::NEG_INFINITY);
        }
        if top_p < 1.0 {
            let (sorted, indices) = scores.sort(-1, false);
            let cumulative = sorted.softmax(-1, Kind::Float).cumsum(-1, Kind::Float);
            let remove = cumulative.le(1.0 - top_p);
            let keep = self.min_tokens_to_keep as i64;
            let _ = remove.narrow(1, vocab - keep, keep).fill_(0);
            let remove = remove.scatter(1, &indices, &remove);
            scores = scores.masked_fill(&remove, f64::NEG_INFINITY);
        }
        scores
    }
}

/// Tokens that would repeat an n-gram already in `seq` (transformers' `_get_generated_ngrams`).
fn banned_ngram_tokens(seq: &[i64], n: usize) -> Vec<i64> {
    if seq.len() + 1 < n {
        return vec![];
    }
    let mut seen: HashMap<&[i64], HashSet<i64>> = HashMap::new();
    for gram in seq.windows(n) {
        seen.entry(&gram[..n - 1]).or_default().insert(gram[n - 1]);
    }
    let tail = &seq[seq.len() + 1 - n..];
    let mut banned: Vec<i64> = seen.get(tail).map(|s| s.iter().copied().collect()).unwrap_or_default();
    banned.sort_unstable();
    banned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bans_the_token_that_would_repeat_a_bigram() {
        assert_eq!(banned_ngram_tokens(&[5, 6, 7, 5], 2), vec![6]);
        assert_eq!(banned_ngram_tokens(&[5, 6, 5, 7, 5], 2), vec![6, 7]);
        assert_eq!(banned_ngram_tokens(&[1, 2, 3, 1, 2], 3), vec![3]);
        assert!(banned_ngram_tokens(&[1], 3).is_empty());
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_scores() {
        let config = GenerationConfig { repetition_penalty: 2.0, ..Default::default() };
        let p = LogitsProcessors::new(&config, 1);
        let scores = Tensor::from_slice(&[1.0f32, -1.0, 4.0, 3.0]).view([1, 4]);
        let out = p.process(&[vec![0, 1, 1]], &scores);
        assert_eq!(Vec::<f32>::try_from(out.view([-1])).unwrap(), vec![0.5, -2.0, 4.0, 3.0]);
    }

    #[test]
    fn top_k_and_top_p_keep_the_most_likely_tokens() {
        let config = GenerationConfig { do_sample: true, top_k: 2, top_p: 1.0, ..Default::default() };
        let p = LogitsProcessors::new(&config, 1);
        let scores = Tensor::from_slice(&[1.0f32, 3.0, 2.0, 0.0]).view([1, 4]);
        let out = Vec::<f32>::try_from(p.process(&[vec![0]], &scores).view([-1])).unwrap();
        assert_eq!(out, vec![f32::NEG_INFINITY, 3.0, 2.0, f32::NEG_INFINITY]);

        let config = GenerationConfig { do_sample: true, top_k: 0, top_p: 0.5, ..Default::default() };
        let p = LogitsProcessors::new(&config, 1);
        let scores = Tensor::from_slice(&[0.0f32, 10.0, 0.0, 0.0]).view([1, 4]);
        let out = Vec::<f32>::try_from(p.process(&[vec![0]], &scores).view([-1])).unwrap();
        assert_eq!(out, vec![f32::NEG_INFINITY, 10.0, f32::NEG_INFINITY, f32::NEG_INFINITY]);
    }

    #[test]
    fn eos_is_suppressed_until_min_new_tokens() {
        let config = GenerationConfig { min_new_tokens: Some(2), ..Default::default() };
        let mut config = config;
        config.set_eos_token_ids(vec![3]);
        let p = LogitsProcessors::new(&config, 1);
        let scores = Tensor::zeros([1, 4], (Kind::Float, tch::Device::Cpu));
        let out = Vec::<f32>::try_from(p.process(&[vec![0, 1]], &scores).view([-1])).unwrap();
        assert_eq!(out[3], f32::NEG_INFINITY);
        let out = Vec::<f32>::try_from(p.process(&[vec![0, 1, 2]], &scores).view([-1])).unwrap();
        assert_eq!(out[3], 0.0);
    }
}
