//! A dense gated feed-forward: `down(act(gate x) * up x)`.

use strata_kernels::{Backend, KernelError};
use strata_model::arch::{layer_tensor, Activation, DenseSpec};

use crate::stage::StageError;
use crate::weights::WeightLoader;

pub struct DenseFfn<B: Backend> {
    activation: Activation,
    gate: B::Weight,
    up: B::Weight,
    down: B::Weight,
}

impl<B: Backend> DenseFfn<B> {
    pub fn load(
        loader: &WeightLoader<'_, B>,
        spec: &DenseSpec,
        d_model: usize,
        il: usize,
    ) -> Result<Self, StageError> {
        Self::load_named(loader, spec.d_ff, spec.activation, d_model, il, "")
    }

    /// The feed-forward whose tensors are `ffn_{gate,up,down}{suffix}`
    /// (`_shexp`: Qwen3.5-MoE's shared expert).
    pub fn load_named(
        loader: &WeightLoader<'_, B>,
        d_ff: usize,
        activation: Activation,
        d_model: usize,
        il: usize,
        suffix: &str,
    ) -> Result<Self, StageError> {
        let t = |n: &str| layer_tensor(il, &format!("ffn_{n}{suffix}.weight"));
        let (d, ff) = (d_model, d_ff);
        Ok(DenseFfn {
            activation,
            gate: loader.required(&t("gate"), &[d, ff])?,
            up: loader.required(&t("up"), &[d, ff])?,
            down: loader.required(&t("down"), &[ff, d])?,
        })
    }

    pub fn forward(&self, b: &B, h: &B::Act) -> Result<B::Act, KernelError> {
        let [g, u] = two(b.matmul_each(&[&self.gate, &self.up], h)?);
        b.matmul(&self.down, &b.gated(&g, &u, self.activation)?)
    }
}

/// The two results of a two-weight `matmul_each`.
fn two<T>(v: Vec<T>) -> [T; 2] {
    v.try_into().unwrap_or_else(|v: Vec<T>| {
        unreachable!("matmul_each gave {} results for 2 weights", v.len())
    })
}
