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
        let t = |n: &str| layer_tensor(il, n);
        let (d, ff) = (d_model, spec.d_ff);
        Ok(DenseFfn {
            activation: spec.activation,
            gate: loader.required(&t("ffn_gate.weight"), &[d, ff])?,
            up: loader.required(&t("ffn_up.weight"), &[d, ff])?,
            down: loader.required(&t("ffn_down.weight"), &[ff, d])?,
        })
    }

    pub fn forward(&self, b: &B, h: &B::Act) -> Result<B::Act, KernelError> {
        let g = b.matmul(&self.gate, h)?;
        let u = b.matmul(&self.up, h)?;
        b.matmul(&self.down, &b.gated(&g, &u, self.activation)?)
    }
}
