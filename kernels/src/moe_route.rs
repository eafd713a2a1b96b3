//! Mixture-of-experts on the host: the router (which experts each token
//! takes, with what weight) and the shape checks every backend's MoE ops
//! share.
//!
//! [`route`] follows llama.cpp's `build_moe_ffn` op by op in ggml-cpu's
//! arithmetic (its x86 AVX-512 build, like the CPU backend; see
//! docs/numerics.md): `soft_max` (`ggml_vec_soft_max_f32`: 16 lanes of
//! `ggml_v_expf` summed by `_mm512_reduce_add_ps` into a double, the tail by
//! `expf`; then one multiply by `(float)(1/sum)`), `sigmoid` (`1/(1+expf(-x))`),
//! `argsort` descending, `get_rows`, `sum_rows` (in double), `clamp`, `div`
//! and `scale`. Ties in the argsort go to the lower expert id (ggml's
//! `std::sort` leaves their order to the library).

use crate::backend::KernelError;
use crate::cpu::expf_ggml;
use crate::cpu::f32_sums::reduce_add_16;

/// How a router's logits become expert probabilities
/// (llama.cpp's `llama_expert_gating_func_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gating {
    /// `soft_max` over all experts; weights are the chosen ones' probabilities.
    Softmax,
    /// Experts chosen by raw logit; weights are the `soft_max` of the chosen
    /// logits (gpt-oss).
    SoftmaxWeight,
    /// `sigmoid` of each logit.
    Sigmoid,
}

/// A layer's router: how its logits (one row of `n_expert` per token, bias
/// added) become `n_used` experts per token and their weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Router {
    pub n_expert: usize,
    pub n_used: usize,
    pub gating: Gating,
    /// Normalize the chosen weights to sum 1.
    pub norm: bool,
    /// Multiplies the weights (unless 0 or 1, as llama.cpp).
    pub scale: f32,
}

/// Most experts per token any router takes (a backend keeps them in fixed
/// arrays); models use 1 to 10.
pub const MAX_USED_EXPERTS: usize = 32;

impl Router {
    /// Refuses a router no backend runs: no experts, or more used than
    /// there are (or than [`MAX_USED_EXPERTS`]).
    pub fn check(&self) -> Result<(), KernelError> {
        if self.n_expert == 0 || !(1..=self.n_expert.min(MAX_USED_EXPERTS)).contains(&self.n_used) {
            return Err(KernelError::Invalid(format!(
                "router: {} experts used of {} (at most {MAX_USED_EXPERTS})",
                self.n_used, self.n_expert
            )));
        }
        Ok(())
    }

    /// The routing of `logits` (`n_tokens x n_expert`) on the host ([`route`]).
    pub fn route_host(&self, logits: &[f32]) -> Result<HostRouting, KernelError> {
        self.check()?;
        if !logits.len().is_multiple_of(self.n_expert) {
            return Err(KernelError::Invalid(format!(
                "router: {} logits are not rows of {} experts",
                logits.len(),
                self.n_expert
            )));
        }
        let (ids, weights) = route(
            logits,
            self.n_expert,
            self.n_used,
            self.gating,
            self.norm,
            self.scale,
        );
        Ok(HostRouting {
            ids,
            weights,
            n_used: self.n_used,
            n_expert: self.n_expert,
        })
    }
}

/// A batch's routing on the host: `n_used` expert ids and weights per
/// token, best first (the CPU backend's `Backend::Routing`).
#[derive(Debug, Clone, PartialEq)]
pub struct HostRouting {
    pub ids: Vec<u32>,
    pub weights: Vec<f32>,
    pub n_used: usize,
    pub n_expert: usize,
}

impl HostRouting {
    /// A routing given by hand, checked: whole tokens of `n_used`, one
    /// weight per id, every id one of `n_expert`.
    pub fn new(
        ids: &[u32],
        weights: &[f32],
        n_used: usize,
        n_expert: usize,
    ) -> Result<Self, KernelError> {
        if n_used == 0 || !ids.len().is_multiple_of(n_used) || weights.len() != ids.len() {
            return Err(KernelError::Invalid(format!(
                "routing: {} ids and {} weights are not whole tokens of {n_used} experts",
                ids.len(),
                weights.len()
            )));
        }
        check_ids("routing", ids, n_expert)?;
        Ok(HostRouting {
            ids: ids.to_vec(),
            weights: weights.to_vec(),
            n_used,
            n_expert,
        })
    }

    pub fn n_tokens(&self) -> usize {
        self.ids.len() / self.n_used
    }
}

/// The smallest weight sum `norm` divides by (f16's smallest normal), as
/// llama.cpp clamps it.
const NORM_MIN_SUM: f32 = 1.0 / 16384.0; // 6.103515625e-5

/// Router of one batch: `logits` is `n_tokens x n_expert` (row-major, the
/// router matmul's output, bias already added). Returns `(ids, weights)`,
/// `n_used` per token, best first: the experts with the highest
/// probabilities and their weights, normalized to sum 1 when `norm`, then
/// times `scale` (unless it is 0 or 1, as llama.cpp).
///
/// # Panics
/// When `logits` is not whole rows of `n_expert`, or `n_used` is 0 or more
/// than `n_expert` (model hyperparameters, checked when the model loads).
pub fn route(
    logits: &[f32],
    n_expert: usize,
    n_used: usize,
    gating: Gating,
    norm: bool,
    scale: f32,
) -> (Vec<u32>, Vec<f32>) {
    assert!(
        n_expert > 0 && logits.len().is_multiple_of(n_expert),
        "route: {} logits are not rows of {n_expert} experts",
        logits.len()
    );
    assert!(
        (1..=n_expert).contains(&n_used),
        "route: {n_used} experts used of {n_expert}"
    );
    let n_tokens = logits.len() / n_expert;
    let mut ids = Vec::with_capacity(n_tokens * n_used);
    let mut weights = Vec::with_capacity(n_tokens * n_used);
    let mut probs = vec![0f32; n_expert];
    let mut order: Vec<u32> = Vec::with_capacity(n_expert);
    for row in logits.chunks_exact(n_expert) {
        match gating {
            Gating::Softmax => soft_max(row, &mut probs),
            Gating::Sigmoid => probs
                .iter_mut()
                .zip(row)
                .for_each(|(p, &x)| *p = 1.0 / (1.0 + (-x).exp())),
            Gating::SoftmaxWeight => probs.copy_from_slice(row),
        }
        order.clear();
        order.extend(0..n_expert as u32);
        // Stable, so equal probabilities keep the lower id first.
        order.sort_by(|&a, &b| probs[b as usize].total_cmp(&probs[a as usize]));
        let chosen = &order[..n_used];
        let mut w: Vec<f32> = chosen.iter().map(|&e| probs[e as usize]).collect();
        if gating == Gating::SoftmaxWeight {
            let logits = w.clone();
            soft_max(&logits, &mut w);
        }
        if norm {
            let sum = w.iter().map(|&v| v as f64).sum::<f64>() as f32;
            let sum = sum.max(NORM_MIN_SUM);
            w.iter_mut().for_each(|v| *v /= sum);
        }
        if scale != 0.0 && scale != 1.0 {
            w.iter_mut().for_each(|v| *v *= scale);
        }
        ids.extend_from_slice(chosen);
        weights.extend_from_slice(&w);
    }
    (ids, weights)
}

/// ggml-cpu's `soft_max` of one row (scale 1, no mask), AVX-512 build.
fn soft_max(x: &[f32], y: &mut [f32]) {
    let max = x
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| if m > v { m } else { v });
    let mut sum = 0f64;
    let lanes = x.len() & !15;
    for (xs, ys) in x[..lanes]
        .chunks_exact(16)
        .zip(y[..lanes].chunks_exact_mut(16))
    {
        for (y, &x) in ys.iter_mut().zip(xs) {
            *y = expf_ggml(x - max);
        }
        sum += reduce_add_16(ys) as f64;
    }
    for (y, &x) in y[lanes..].iter_mut().zip(&x[lanes..]) {
        *y = (x - max).exp();
        sum += *y as f64;
    }
    let inv = (1.0 / sum) as f32;
    y.iter_mut().for_each(|v| *v *= inv);
}

/// A `matmul_id` call's shape, checked (see `Backend::matmul_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MatmulIdShape {
    pub rows_per_expert: usize,
    /// Rows of `x` (the tokens when broadcast, else the expert slots).
    pub x_rows: usize,
    /// `x` has one row per slot (down), not per token (gate/up).
    pub per_slot: bool,
}

impl MatmulIdShape {
    /// The row of `x` that output row (slot) `s` multiplies.
    pub fn x_row(&self, s: usize, n_used: usize) -> usize {
        if self.per_slot {
            s
        } else {
            s / n_used
        }
    }
}

/// A `matmul_id` call's shape checked: `n_slots` output rows, `n_used`
/// per token, and `x` one row per token or per slot.
pub(crate) fn check_matmul_id(
    name: &str,
    w_rows: usize,
    w_cols: usize,
    n_expert: usize,
    (x_rows, x_cols): (usize, usize),
    n_slots: usize,
    n_used: usize,
) -> Result<MatmulIdShape, KernelError> {
    let bad = |what: String| KernelError::Invalid(format!("matmul_id {name}: {what}"));
    if n_expert == 0 || !w_rows.is_multiple_of(n_expert) {
        return Err(bad(format!("{w_rows} rows are not {n_expert} experts")));
    }
    if x_cols != w_cols {
        return Err(bad(format!(
            "activation width {x_cols} vs expert rows of {w_cols}"
        )));
    }
    if n_used == 0 || !n_slots.is_multiple_of(n_used) {
        return Err(bad(format!(
            "{n_slots} expert slots are not {n_used} per token"
        )));
    }
    let n_tokens = n_slots / n_used;
    let per_slot = if x_rows == n_slots {
        true
    } else if x_rows == n_tokens {
        false
    } else {
        return Err(bad(format!(
            "{x_rows} activation rows for {n_tokens} tokens of {n_used} experts"
        )));
    };
    Ok(MatmulIdShape {
        rows_per_expert: w_rows / n_expert,
        x_rows,
        per_slot,
    })
}

/// Every id names one of `n_expert` experts.
pub(crate) fn check_ids(name: &str, ids: &[u32], n_expert: usize) -> Result<(), KernelError> {
    match ids.iter().find(|&&e| e as usize >= n_expert) {
        Some(bad) => Err(KernelError::Invalid(format!(
            "{name}: expert id {bad} of {n_expert} experts"
        ))),
        None => Ok(()),
    }
}

/// `moe_combine`'s input checked: `y` has `weights.len()` rows, whole tokens
/// of `n_used`. Returns the token count.
pub(crate) fn check_combine(
    y_rows: usize,
    weights: usize,
    n_used: usize,
) -> Result<usize, KernelError> {
    if n_used == 0 || y_rows != weights || !y_rows.is_multiple_of(n_used) {
        return Err(KernelError::Invalid(format!(
            "moe_combine: {y_rows} expert outputs, {weights} weights, {n_used} experts per token"
        )));
    }
    Ok(y_rows / n_used)
}

#[cfg(test)]
mod tests;
