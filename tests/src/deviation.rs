//! How far our log-probabilities are from llama.cpp's: every top-k entry
//! of every step a reference test compares, the mean and the worst; and
//! how far two of our backends' runs are apart ([`top5_deviation`]).

use strata_worker::sampler::log_sum_exp;

#[derive(Debug, Default)]
pub struct LogprobDeviation {
    sum: f64,
    pub entries: usize,
    pub worst: f32,
    /// Where the worst deviation was, for the failure message.
    pub worst_at: String,
}

impl LogprobDeviation {
    /// One step: our raw `logits` against llama.cpp's `(token, logprob)`
    /// entries; `at` names the step (the label and step index).
    pub fn add_step(&mut self, logits: &[f32], top: &[(u32, f32)], at: &str) {
        let z = log_sum_exp(logits);
        for &(id, lp) in top {
            let ours = logits[id as usize] - z;
            let dev = (ours - lp).abs();
            self.sum += dev as f64;
            self.entries += 1;
            if dev >= self.worst {
                self.worst = dev;
                self.worst_at = format!("{at} token {id}: {ours} vs llama.cpp {lp}");
            }
        }
    }

    pub fn mean(&self) -> f32 {
        (self.sum / self.entries.max(1) as f64) as f32
    }

    /// Prints the figures and fails unless every entry is under `bound`.
    pub fn check(&self, name: &str, bound: f32) {
        eprintln!(
            "{name}: top-5 logprob deviation over {} entries: mean {:.5}, worst {:.5} at {}",
            self.entries,
            self.mean(),
            self.worst,
            self.worst_at
        );
        assert!(
            self.worst < bound,
            "{name}: {} (mean deviation {})",
            self.worst_at,
            self.mean()
        );
    }
}

/// The first index of the largest value (the greedy pick).
pub fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |b, t| if row[t] > row[b] { t } else { b })
}

/// The largest |Δ log-prob| of `other` over `reference`'s top 5 tokens
/// (both log-probabilities of a whole vocabulary): how two backends' runs
/// compare.
pub fn top5_deviation(reference: &[f32], other: &[f32]) -> f32 {
    let mut order: Vec<usize> = (0..reference.len()).collect();
    order.sort_by(|&a, &b| reference[b].total_cmp(&reference[a]));
    order[..5]
        .iter()
        .map(|&t| (reference[t] - other[t]).abs())
        .fold(0.0, f32::max)
}
