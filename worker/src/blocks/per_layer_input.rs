//! Gemma 4 E-series per-layer embeddings (llama.cpp's
//! `build_inp_per_layer`, `project_per_layer_inputs` and the block after
//! each layer's feed-forward; docs/plans/qwen35-gemma4.md §2.5).
//!
//! Every stage makes its own layers' inputs from the token ids the frames
//! carry: a layer's input depends only on its token and the token's
//! embedding, so nothing but the ids crosses a stage boundary.

use strata_kernels::{Backend, Unary};
use strata_model::arch::{layer_tensor, ModelSpec};

use crate::stage::{LayerRange, StageError};
use crate::weights::WeightLoader;

/// The stage's share of the per-layer tables.
pub struct PerLayerInputs<B: Backend> {
    /// `per_layer_token_embd` columns of the stage's layers.
    tokens: B::Weight,
    /// `per_layer_model_proj` rows of the stage's layers.
    proj: B::Weight,
    /// `per_layer_proj_norm`, one width-`P` weight every layer shares.
    norm: B::Weight,
    width: usize,
    d_model: usize,
}

impl<B: Backend> PerLayerInputs<B> {
    /// `None` for a model without per-layer embeddings.
    pub fn load(
        loader: &WeightLoader<'_, B>,
        model: &ModelSpec,
        range: LayerRange,
    ) -> Result<Option<Self>, StageError> {
        let Some(p) = model.per_layer_input else {
            return Ok(None);
        };
        let (d, n, vocab) = (model.d_model, model.n_layers, model.vocab_size);
        let mine = range.first * p..range.end * p;
        Ok(Some(PerLayerInputs {
            tokens: loader.required_columns(
                "per_layer_token_embd.weight",
                &[p * n, vocab],
                mine.clone(),
            )?,
            proj: loader.required_rows("per_layer_model_proj.weight", &[d, p * n], |r| {
                mine.contains(&r)
            })?,
            norm: loader.required("per_layer_proj_norm.weight", &[p])?,
            width: p,
            d_model: d,
        }))
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// `tokens x (P · stage layers)`: the stage's layers' inputs side by
    /// side, in ggml's order: `(rms_norm(proj · e / √d) · norm + table[id]
    /// · √P) / √2`, with `e` the token embedding (`token_embd`, which every
    /// stage of such a model holds) scaled by √d.
    pub fn inputs(
        &self,
        b: &B,
        embedding: &B::Weight,
        ids: &[u32],
        eps: f32,
    ) -> Result<B::Act, StageError> {
        let d = self.d_model as f32;
        let e = b.embed(embedding, ids, d.sqrt())?;
        let mut j = b.matmul(&self.proj, &e)?;
        b.scale(&mut j, 1.0 / d.sqrt())?;
        let mut j = b.rms_norm(&j, &self.norm, eps)?;
        let t = b.embed(&self.tokens, ids, (self.width as f32).sqrt())?;
        b.add_assign(&mut j, &t)?;
        b.scale(&mut j, 1.0 / 2f32.sqrt())?;
        Ok(j)
    }
}

/// A layer's gate, projection and norm of its per-layer input.
pub struct PerLayerBlock<B: Backend> {
    inp_gate: B::Weight,
    proj: B::Weight,
    post_norm: B::Weight,
}

impl<B: Backend> PerLayerBlock<B> {
    pub fn load(
        loader: &WeightLoader<'_, B>,
        model: &ModelSpec,
        il: usize,
    ) -> Result<Option<Self>, StageError> {
        let Some(p) = model.per_layer_input else {
            return Ok(None);
        };
        let (d, t) = (model.d_model, |n: &str| layer_tensor(il, n));
        Ok(Some(PerLayerBlock {
            inp_gate: loader.required(&t("inp_gate.weight"), &[d, p])?,
            proj: loader.required(&t("proj.weight"), &[p, d])?,
            post_norm: loader.required(&t("post_norm.weight"), &[d])?,
        }))
    }

    /// `x += rms_norm(proj · (gelu(inp_gate · x) ⊙ input)) · post_norm`.
    pub fn forward(
        &self,
        b: &B,
        x: &mut B::Act,
        input: &B::Act,
        eps: f32,
    ) -> Result<(), StageError> {
        let mut g = b.matmul(&self.inp_gate, x)?;
        b.unary(&mut g, Unary::Gelu)?;
        b.mul(&mut g, input)?;
        let o = b.rms_norm(&b.matmul(&self.proj, &g)?, &self.post_norm, eps)?;
        b.add_assign(x, &o)?;
        Ok(())
    }
}
