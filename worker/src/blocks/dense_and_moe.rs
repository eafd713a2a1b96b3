//! Gemma 4's mixture-of-experts layers: a dense GELU MLP and the experts
//! side by side on the attention output, each with its own norms, summed
//! (llama.cpp's `src/models/gemma4.cpp`, the `is_moe_layer` branch):
//!
//! ```text
//! d = rms_norm(mlp(rms_norm(x) · ffn_norm)) · post_ffw_norm_1
//! r = rms_norm(x) / √d_model · ffn_gate_inp.scale       the router's input
//! e = rms_norm(experts(rms_norm(x) · pre_ffw_norm_2; W_router r)) · post_ffw_norm_2
//! f = d + e                                              (then post_ffw_norm)
//! ```

use strata_kernels::Backend;
use strata_model::arch::{layer_tensor, MoeSpec};

use super::{DenseFfn, MoeFfn};
use crate::stage::StageError;
use crate::weights::WeightLoader;

pub struct DenseAndMoe<B: Backend> {
    dense_norm: B::Weight,
    dense: DenseFfn<B>,
    dense_post_norm: B::Weight,
    experts_norm: B::Weight,
    experts: MoeFfn<B>,
    experts_post_norm: B::Weight,
    router_scale: B::Weight,
    d_model: usize,
}

impl<B: Backend> DenseAndMoe<B> {
    pub fn load(
        loader: &WeightLoader<'_, B>,
        spec: &MoeSpec,
        d_model: usize,
        il: usize,
    ) -> Result<Self, StageError> {
        let dense = spec.dense_beside.as_ref().ok_or_else(|| {
            StageError::Model(format!("layer {il}: no dense MLP beside the experts"))
        })?;
        let vector = |name: &str| loader.required(&layer_tensor(il, name), &[d_model]);
        Ok(DenseAndMoe {
            dense_norm: vector(&format!("{}.weight", dense.norm_name))?,
            dense: DenseFfn::load(loader, dense, d_model, il)?,
            dense_post_norm: vector("post_ffw_norm_1.weight")?,
            experts_norm: vector(&format!("{}.weight", spec.norm_name))?,
            experts: MoeFfn::load(loader, spec, d_model, il)?,
            experts_post_norm: vector("post_ffw_norm_2.weight")?,
            router_scale: vector("ffn_gate_inp.scale")?,
            d_model,
        })
    }

    /// `x` is the layer's residual after attention; returns `f` (the layer
    /// applies `post_ffw_norm` and adds it).
    pub fn forward(&self, b: &B, x: &B::Act, eps: f32) -> Result<B::Act, StageError> {
        let mut d = self
            .dense
            .forward(b, &b.rms_norm(x, &self.dense_norm, eps)?)?;
        d = b.rms_norm(&d, &self.dense_post_norm, eps)?;

        let mut r = b.rms_norm_plain(x, self.d_model, eps)?;
        b.scale(&mut r, 1.0 / (self.d_model as f32).sqrt())?;
        b.mul_weight(&mut r, &self.router_scale)?;
        let logits = self.experts.router_logits(b, &r)?;
        let h = b.rms_norm(x, &self.experts_norm, eps)?;
        let e = self.experts.forward_routed(b, &h, &logits)?;
        let e = b.rms_norm(&e, &self.experts_post_norm, eps)?;
        b.add_assign(&mut d, &e)?;
        Ok(d)
    }
}
