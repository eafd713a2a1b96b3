//! Qwen3.5's gated DeltaNet as a mixer (llama.cpp's
//! `llama_model_qwen35::graph::build_layer_attn_linear` and
//! `delta-net-base.cpp`; docs/plans/qwen35-gemma4.md §1.5):
//!
//! ```text
//! qkv  = W_qkv x                      conv input: q, k, v channels
//! z    = W_gate x                     output gate
//! β    = sigmoid(W_beta x)
//! g    = softplus(W_alpha x + dt) · a  log decay per value head (a < 0)
//! c    = silu(conv(qkv, conv state))  → q, k (H_k heads), v (H_v heads)
//! q, k = l2_norm(q), l2_norm(k)       rms_norm(eps / S) · 1/√S per head
//! o    = delta_rule(q, k, v, g, β, state)
//! out  = W_out (rms_norm_head(o) · ssm_norm ⊙ silu(z))
//! ```
//!
//! Each sequence's conv and delta-rule states are rows of
//! [`RecurrentState`], which the stage owns.

use strata_kernels::{Backend, DeltaNetShape, RecurrentBatch, Unary};
use strata_model::arch::{layer_tensor, DeltaNetSpec};

use crate::stage::StageError;
use crate::weights::WeightLoader;

/// One DeltaNet layer's states for every sequence slot of a stage: rows of
/// the conv state and of the delta-rule state.
pub struct RecurrentState<B: Backend> {
    pub conv: B::Act,
    pub ssm: B::Act,
}

impl<B: Backend> RecurrentState<B> {
    pub fn new(b: &B, spec: &DeltaNetSpec, slots: usize) -> Result<Self, StageError> {
        Ok(RecurrentState {
            conv: b.act_zeros(slots, spec.conv_state_len())?,
            ssm: b.act_zeros(slots, spec.ssm_state_len())?,
        })
    }

    /// Copies state row `from` over row `to` (a prefix-cache snapshot saved
    /// or resumed).
    pub fn copy_row(&mut self, b: &B, from: u32, to: u32) -> Result<(), StageError> {
        b.copy_rows(&mut self.conv, &[from], &[to])?;
        b.copy_rows(&mut self.ssm, &[from], &[to])?;
        Ok(())
    }

    /// Clears the slots new sequences take.
    pub fn clear(&mut self, b: &B, slots: &[u32]) -> Result<(), StageError> {
        b.zero_rows(&mut self.conv, slots)?;
        b.zero_rows(&mut self.ssm, slots)?;
        Ok(())
    }
}

pub struct DeltaNet<B: Backend> {
    spec: DeltaNetSpec,
    w_qkv: B::Weight,
    w_gate: B::Weight,
    w_beta: B::Weight,
    w_alpha: B::Weight,
    dt_bias: B::Weight,
    a: B::Weight,
    conv: B::Weight,
    norm: B::Weight,
    w_out: B::Weight,
}

impl<B: Backend> DeltaNet<B> {
    pub fn load(
        loader: &WeightLoader<'_, B>,
        spec: &DeltaNetSpec,
        d_model: usize,
        il: usize,
    ) -> Result<Self, StageError> {
        let t = |n: &str| layer_tensor(il, n);
        let (d, conv_dim, inner, hv) = (d_model, spec.conv_dim(), spec.d_inner, spec.n_v_heads);
        Ok(DeltaNet {
            w_qkv: loader.required(&t("attn_qkv.weight"), &[d, conv_dim])?,
            w_gate: loader.required(&t("attn_gate.weight"), &[d, inner])?,
            w_beta: loader.required(&t("ssm_beta.weight"), &[d, hv])?,
            w_alpha: loader.required(&t("ssm_alpha.weight"), &[d, hv])?,
            dt_bias: loader.required(&t("ssm_dt.bias"), &[hv])?,
            a: loader.required(&t("ssm_a"), &[hv])?,
            conv: loader.required(&t("ssm_conv1d.weight"), &[spec.d_conv, conv_dim])?,
            norm: loader.required(&t("ssm_norm.weight"), &[spec.d_state])?,
            w_out: loader.required(&t("ssm_out.weight"), &[inner, d])?,
            spec: spec.clone(),
        })
    }

    pub fn spec(&self) -> &DeltaNetSpec {
        &self.spec
    }

    /// `h` is the normed input; returns `ssm_out`'s rows.
    pub fn forward(
        &self,
        b: &B,
        h: &B::Act,
        state: &mut RecurrentState<B>,
        batch: &RecurrentBatch<'_>,
    ) -> Result<B::Act, StageError> {
        let s = &self.spec;
        let qkv = b.matmul(&self.w_qkv, h)?;
        let mut z = b.matmul(&self.w_gate, h)?;
        let mut beta = b.matmul(&self.w_beta, h)?;
        b.unary(&mut beta, Unary::Sigmoid)?;
        let mut g = b.matmul(&self.w_alpha, h)?;
        b.add_bias(&mut g, &self.dt_bias)?;
        b.unary(&mut g, Unary::Softplus)?;
        b.mul_weight(&mut g, &self.a)?;

        let mut c = b.ssm_conv(&qkv, &self.conv, &mut state.conv, batch)?;
        b.unary(&mut c, Unary::Silu)?;
        let key_dim = s.key_dim();
        let l2_norm = |start: usize| -> Result<B::Act, StageError> {
            // build_gdn_l2_norm: rms_norm(x, eps / S) then scale 1 / sqrtf(S).
            let x = b.columns(&c, start, key_dim)?;
            let width = s.d_state as f32;
            let mut x = b.rms_norm_plain(&x, s.d_state, s.eps / width)?;
            b.scale(&mut x, 1.0 / width.sqrt())?;
            Ok(x)
        };
        let q = l2_norm(0)?;
        let k = l2_norm(key_dim)?;
        let v = b.columns(&c, 2 * key_dim, s.d_inner)?;
        let shape = DeltaNetShape {
            head_dim: s.d_state,
            n_k_heads: s.n_k_heads,
            n_v_heads: s.n_v_heads,
        };
        let o = b.delta_net(shape, &q, &k, &v, &g, &beta, &mut state.ssm, batch)?;

        // build_norm_gated: rms_norm per head times ssm_norm, ⊙ silu(z).
        let mut o = b.rms_norm(&o, &self.norm, s.eps)?;
        b.unary(&mut z, Unary::Silu)?;
        b.mul(&mut o, &z)?;
        Ok(b.matmul(&self.w_out, &o)?)
    }
}
