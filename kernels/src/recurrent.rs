//! What the recurrent ops (Qwen3.5's gated DeltaNet) take besides their
//! activations: the head shape of the delta rule, and which state slot each
//! sequence of a batch owns.
//!
//! A stage keeps each recurrent layer's states as activations of `slots`
//! rows (one row per sequence slot): the conv state (`(d_conv - 1) x
//! channels` values, oldest input first) and the delta-rule state (`H_v`
//! matrices of `S x S`, transposed as ggml stores them).

use crate::backend::KernelError;

/// Head counts and size of the gated delta rule. Key heads are ggml's
/// `ssm_n_group` (`H_k`), value heads its `ssm_dt_rank` (`H_v`); both have
/// `head_dim` values (`S`: ggml's fused op asserts `S_k == S_v`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaNetShape {
    pub head_dim: usize,
    pub n_k_heads: usize,
    pub n_v_heads: usize,
}

impl DeltaNetShape {
    /// f32 values in one sequence's state: `H_v` matrices of `S x S`.
    pub fn state_len(&self) -> usize {
        self.n_v_heads * self.head_dim * self.head_dim
    }

    pub(crate) fn check(&self) -> Result<(), KernelError> {
        let ok = self.head_dim > 0
            && self.n_k_heads > 0
            && self.n_v_heads > 0
            && self.n_v_heads.is_multiple_of(self.n_k_heads)
            && self.head_dim.checked_mul(self.head_dim).is_some();
        if ok {
            Ok(())
        } else {
            Err(KernelError::Invalid(format!(
                "gated_delta_net: {self:?}: needs S > 0 and H_v a multiple of H_k > 0"
            )))
        }
    }
}

/// Which state row each token reads and writes. Token `t` belongs to batch
/// sequence `token_seq[t]`, whose state is row `seq_slots[token_seq[t]]`.
/// A sequence's tokens are consecutive and in order (the batch is a list
/// of runs), so the recurrence walks each run from its first token.
#[derive(Debug, Clone, Copy)]
pub struct RecurrentBatch<'a> {
    pub token_seq: &'a [u32],
    pub seq_slots: &'a [u32],
}

impl RecurrentBatch<'_> {
    /// The runs as `(slot, first token, token count)`, checked: `rows`
    /// tokens, each sequence one run, every slot below `slots` and owned by
    /// one sequence.
    pub fn runs(
        &self,
        rows: usize,
        slots: usize,
    ) -> Result<Vec<(usize, usize, usize)>, KernelError> {
        let bad = |what: String| Err(KernelError::Invalid(format!("recurrent batch: {what}")));
        if self.token_seq.len() != rows {
            return bad(format!(
                "{} sequence ids for {rows} rows",
                self.token_seq.len()
            ));
        }
        let mut runs: Vec<(usize, usize, usize)> = Vec::new();
        let mut seen = vec![false; self.seq_slots.len()];
        for (t, &s) in self.token_seq.iter().enumerate() {
            let s = s as usize;
            if runs.last().is_some_and(|r| r.0 == s) {
                runs.last_mut().expect("checked").2 += 1;
                continue;
            }
            match seen.get_mut(s) {
                None => {
                    return bad(format!(
                        "token {t} of sequence {s}, past the {} slots given",
                        self.seq_slots.len()
                    ))
                }
                Some(true) => return bad(format!("sequence {s}'s tokens are not consecutive")),
                Some(seen) => *seen = true,
            }
            runs.push((s, t, 1));
        }
        // Each slot owned by one sequence: checked by sorting, so that
        // `slots` (which may be a bound only) sizes nothing.
        let mut owners: Vec<(usize, usize)> = Vec::with_capacity(runs.len());
        for run in &mut runs {
            let slot = self.seq_slots[run.0] as usize;
            if slot >= slots {
                return bad(format!("state slot {slot} of {slots}"));
            }
            owners.push((slot, run.0));
            run.0 = slot;
        }
        owners.sort_unstable();
        if let Some(w) = owners.windows(2).find(|w| w[0].0 == w[1].0) {
            return bad(format!(
                "sequences {} and {} share state slot {}",
                w[0].1, w[1].1, w[0].0
            ));
        }
        Ok(runs)
    }
}
