//! Sampling a token from logits with a sequence's parameters, in
//! llama.cpp's order: penalties, top-k, top-p, min-p, temperature, draw.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 (or below) is greedy.
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1 disables.
    pub top_p: f32,
    /// 0 disables.
    pub min_p: f32,
    pub seed: u64,
    /// 1 disables (llama.cpp's repeat penalty).
    pub repetition_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// Most recent tokens the penalties look at.
    pub penalty_last_n: usize,
    /// How many top log-probabilities to report per step (0: none).
    pub n_logprobs: usize,
    /// (token, bias) added to logits before the chain (OpenAI's logit_bias).
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            seed: 0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            n_logprobs: 0,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }
}

/// A token and its log-probability under the model (before sampling).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
    pub logprob: f32,
    /// The `n_logprobs` most likely tokens, best first.
    pub top: Vec<TokenLogprob>,
}

pub struct Sampler {
    params: SamplingParams,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        Sampler { params }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Samples the next token. `history` is the sequence so far (prompt and
    /// generated), for the penalties.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Sampled {
        let p = &self.params;
        let log_z = log_sum_exp(logits);
        let logprob = |t: u32| logits[t as usize] - log_z;
        let top = if p.n_logprobs > 0 {
            top_n(logits, p.n_logprobs)
                .into_iter()
                .map(|t| TokenLogprob {
                    token: t,
                    logprob: logprob(t),
                })
                .collect()
        } else {
            Vec::new()
        };

        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        for &(t, bias) in &p.logit_bias {
            if let Some(c) = cand.get_mut(t as usize) {
                c.1 += bias;
            }
        }
        apply_penalties(&mut cand, history, p);
        let token = if p.temperature <= 0.0 {
            argmax(&cand)
        } else {
            let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
            if p.top_k > 0 && p.top_k < cand.len() {
                // Select the top k first: sorting a whole vocabulary per
                // token showed in profiles.
                cand.select_nth_unstable_by(p.top_k - 1, by_logit);
                cand.truncate(p.top_k);
            }
            cand.sort_unstable_by(by_logit);
            let probs = softmax(&cand, 1.0);
            if p.top_p < 1.0 {
                let mut acc = 0.0;
                let keep = probs.iter().position(|&q| {
                    acc += q;
                    acc >= p.top_p
                });
                cand.truncate(keep.map_or(cand.len(), |i| i + 1));
            }
            if p.min_p > 0.0 && !cand.is_empty() {
                // Relative to the best token: p_i >= min_p * p_max.
                let floor = cand[0].1 + p.min_p.ln();
                cand.retain(|c| c.1 >= floor);
            }
            let probs = softmax(&cand, p.temperature);
            // One draw keyed by (seed, position): a sequence replayed on a
            // new pipeline after a failover draws what it would have drawn.
            let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
            rng.set_stream(history.len() as u64);
            let r: f32 = rng.random();
            let mut acc = 0.0;
            let mut chosen = cand.last().map_or(0, |c| c.0);
            for (c, q) in cand.iter().zip(&probs) {
                acc += q;
                if r < acc {
                    chosen = c.0;
                    break;
                }
            }
            chosen
        };
        Sampled {
            token,
            logprob: logprob(token),
            top,
        }
    }
}

fn apply_penalties(cand: &mut [(u32, f32)], history: &[u32], p: &SamplingParams) {
    if p.repetition_penalty == 1.0 && p.presence_penalty == 0.0 && p.frequency_penalty == 0.0 {
        return;
    }
    let recent = &history[history.len().saturating_sub(p.penalty_last_n)..];
    let mut counts: HashMap<u32, u32> = HashMap::new();
    for &t in recent {
        *counts.entry(t).or_default() += 1;
    }
    for (&t, &n) in &counts {
        let Some(c) = cand.get_mut(t as usize) else {
            continue;
        };
        if c.1 > 0.0 {
            c.1 /= p.repetition_penalty;
        } else {
            c.1 *= p.repetition_penalty;
        }
        c.1 -= n as f32 * p.frequency_penalty + p.presence_penalty;
    }
}

fn argmax(cand: &[(u32, f32)]) -> u32 {
    // First maximum wins, as llama.cpp's greedy sampler.
    let mut best = 0;
    for (i, c) in cand.iter().enumerate() {
        if c.1 > cand[best].1 {
            best = i;
        }
    }
    cand.get(best).map_or(0, |c| c.0)
}

fn softmax(cand: &[(u32, f32)], temperature: f32) -> Vec<f32> {
    let max = cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = cand
        .iter()
        .map(|c| ((c.1 - max) / temperature).exp())
        .collect();
    let sum: f32 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

pub fn log_sum_exp(x: &[f32]) -> f32 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + x.iter().map(|v| ((v - max) as f64).exp()).sum::<f64>().ln() as f32
}

/// Indices of the `n` largest values, largest first.
pub fn top_n(x: &[f32], n: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..x.len() as u32).collect();
    let n = n.min(idx.len());
    if n == 0 {
        return Vec::new();
    }
    idx.select_nth_unstable_by(n - 1, |&a, &b| x[b as usize].total_cmp(&x[a as usize]));
    idx.truncate(n);
    idx.sort_by(|&a, &b| x[b as usize].total_cmp(&x[a as usize]));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_max_and_reports_logprobs() {
        let logits = [0.0, 3.0, 1.0, 3.0];
        let mut s = Sampler::new(SamplingParams {
            n_logprobs: 2,
            ..SamplingParams::greedy()
        });
        let out = s.sample(&logits, &[]);
        assert_eq!(out.token, 1);
        assert_eq!(out.top.len(), 2);
        let z = log_sum_exp(&logits);
        assert!((out.logprob - (3.0 - z)).abs() < 1e-6);
    }

    #[test]
    fn seeded_sampling_repeats_and_respects_top_k() {
        let logits: Vec<f32> = (0..100).map(|i| (i % 7) as f32).collect();
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 3,
            top_p: 1.0,
            min_p: 0.0,
            seed: 42,
            ..Default::default()
        };
        let a: Vec<u32> = {
            let mut s = Sampler::new(params.clone());
            (0..50).map(|_| s.sample(&logits, &[]).token).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(params);
            (0..50).map(|_| s.sample(&logits, &[]).token).collect()
        };
        assert_eq!(a, b);
        assert!(
            a.iter().all(|&t| t % 7 == 6),
            "top_k=3 over ties keeps only value-6 logits: {a:?}"
        );
    }

    #[test]
    fn logit_bias_bans_and_forces_tokens() {
        let logits = [2.0, 1.0, 0.5];
        let mut s = Sampler::new(SamplingParams {
            logit_bias: vec![(0, -100.0)],
            ..SamplingParams::greedy()
        });
        assert_eq!(s.sample(&logits, &[]).token, 1);
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            logit_bias: vec![(2, 100.0), (99, 5.0)],
            ..Default::default()
        });
        assert!((0..20).all(|_| s.sample(&logits, &[]).token == 2));
    }

    #[test]
    fn repetition_penalty_moves_greedy_choice() {
        let logits = [2.0, 1.9];
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 1.5,
            ..SamplingParams::greedy()
        });
        assert_eq!(s.sample(&logits, &[0]).token, 1);
    }
}
