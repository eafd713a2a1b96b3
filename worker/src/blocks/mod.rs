//! The blocks a stage runs, one file per kind: a layer is its mixer
//! (`attention.rs`, or Qwen3.5's recurrent `delta_net.rs`) then its
//! feed-forward (`dense_ffn.rs` or `moe_ffn.rs`), each pre-normed and added
//! to the residual, as its `LayerSpec` says.

mod attention;
mod delta_net;
mod dense_and_moe;
mod dense_ffn;
mod moe_ffn;
mod mtp;
mod per_layer_input;

use strata_kernels::{Backend, KvBlockId, RecurrentBatch};
use strata_model::arch::{layer_tensor, FeedForward, LayerSpec, Mixer, ModelSpec};

use crate::stage::StageError;
use crate::weights::WeightLoader;

pub use attention::Attention;
pub use delta_net::{DeltaNet, RecurrentState};
pub use dense_and_moe::DenseAndMoe;
pub use dense_ffn::DenseFfn;
pub use moe_ffn::MoeFfn;
pub use mtp::MtpHead;
pub use per_layer_input::{PerLayerBlock, PerLayerInputs};

/// What every layer of one batch shares.
pub struct BatchContext<'a, B: Backend> {
    /// Position of each token in its sequence.
    pub positions: &'a [u32],
    /// Index (into `block_tables`) of each token's sequence.
    pub token_seq: &'a [u32],
    pub block_tables: &'a [&'a [KvBlockId]],
    /// Which tokens are decode steps (`AttentionBatch::decode`).
    pub decode: &'a [bool],
    /// Which tokens take ggml's tiled order (`AttentionBatch::tiled`).
    pub tiled: &'a [bool],
    /// The model's RoPE frequency factors (llama3-style scaling), if any.
    pub rope_freqs: Option<&'a B::Weight>,
    /// Each sequence's recurrent state slot (DeltaNet layers).
    pub recurrent: RecurrentBatch<'a>,
}

pub enum MixerBlock<B: Backend> {
    Attention(Attention<B>),
    DeltaNet(DeltaNet<B>),
}

/// What a layer's mixer keeps between batches: its layer of the stage's
/// KV pool, or its recurrent states.
pub enum MixerState<'a, B: Backend> {
    Kv {
        cache: &'a mut B::KvCache,
        layer: usize,
        /// Each batch sequence's block table in this pool.
        tables: &'a [&'a [KvBlockId]],
    },
    Recurrent(&'a mut RecurrentState<B>),
}

pub enum FfnBlock<B: Backend> {
    Dense(DenseFfn<B>),
    Moe(MoeFfn<B>),
    /// Gemma 4: a dense MLP and experts side by side, each with its norms.
    DenseAndMoe(DenseAndMoe<B>),
}

pub struct Layer<B: Backend> {
    spec: LayerSpec,
    attn_norm: B::Weight,
    mixer: MixerBlock<B>,
    post_attn_norm: Option<B::Weight>,
    /// The norm before the feed-forward (`None`: the block norms its own input).
    ffn_norm: Option<B::Weight>,
    ffn: FfnBlock<B>,
    post_ffn_norm: Option<B::Weight>,
    /// Gemma 4's `layer_output_scale`: one value the residual is multiplied by.
    layer_scale: Option<B::Weight>,
    /// Gemma 4 E-series: the layer's per-layer embedding block.
    per_layer: Option<PerLayerBlock<B>>,
}

impl<B: Backend> Layer<B> {
    pub fn load(
        loader: &WeightLoader<'_, B>,
        model: &ModelSpec,
        il: usize,
    ) -> Result<Self, StageError> {
        let spec = model
            .block(il)
            .ok_or_else(|| StageError::Model(format!("the model has no block {il}")))?
            .clone();
        let d = model.d_model;
        let t = |n: &str| layer_tensor(il, n);
        let mixer = match &spec.mixer {
            Mixer::Attention(a) => MixerBlock::Attention(Attention::load(loader, a, d, il, model)?),
            Mixer::DeltaNet(dn) => MixerBlock::DeltaNet(DeltaNet::load(loader, dn, d, il)?),
        };
        let (ffn, norm_name) = match &spec.ffn {
            FeedForward::Dense(f) => (
                FfnBlock::Dense(DenseFfn::load(loader, f, d, il)?),
                f.norm_name,
            ),
            FeedForward::Moe(m) if m.dense_beside.is_some() => (
                FfnBlock::DenseAndMoe(DenseAndMoe::load(loader, m, d, il)?),
                "",
            ),
            FeedForward::Moe(m) => (FfnBlock::Moe(MoeFfn::load(loader, m, d, il)?), m.norm_name),
        };
        let post = |name: &str| -> Result<Option<B::Weight>, StageError> {
            if spec.post_norms {
                loader.required(&t(name), &[d]).map(Some)
            } else {
                Ok(None)
            }
        };
        Ok(Layer {
            attn_norm: loader.required(&t("attn_norm.weight"), &[d])?,
            mixer,
            post_attn_norm: post("post_attention_norm.weight")?,
            ffn_norm: match norm_name {
                "" => None,
                name => Some(loader.required(&t(&format!("{name}.weight")), &[d])?),
            },
            ffn,
            post_ffn_norm: post("post_ffw_norm.weight")?,
            layer_scale: if spec.layer_scale {
                Some(loader.required(&t("layer_output_scale.weight"), &[1])?)
            } else {
                None
            },
            per_layer: PerLayerBlock::load(loader, model, il)?,
            spec,
        })
    }

    /// The layer's attention; `None` for a recurrent layer.
    pub fn attention(&self) -> Option<&Attention<B>> {
        match &self.mixer {
            MixerBlock::Attention(a) => Some(a),
            MixerBlock::DeltaNet(_) => None,
        }
    }

    /// The layer's DeltaNet; `None` for an attention layer.
    pub fn delta_net(&self) -> Option<&DeltaNet<B>> {
        match &self.mixer {
            MixerBlock::DeltaNet(d) => Some(d),
            MixerBlock::Attention(_) => None,
        }
    }

    /// Runs the layer on `x`. With `keep_rows`, only those rows go on after
    /// the attention output (the last layer keeps the rows the head reads).
    /// `per_layer_input` is this layer's (Gemma 4 E-series), one row per
    /// token of `x`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        b: &B,
        model: &ModelSpec,
        mut x: B::Act,
        batch: &BatchContext<'_, B>,
        state: MixerState<'_, B>,
        keep_rows: Option<&[usize]>,
        per_layer_input: Option<B::Act>,
    ) -> Result<B::Act, StageError> {
        let eps = model.rms_eps;
        let h = b.rms_norm(&x, &self.attn_norm, eps)?;
        let mut o = match (&self.mixer, state) {
            (
                MixerBlock::Attention(a),
                MixerState::Kv {
                    cache,
                    layer,
                    tables,
                },
            ) => a.forward(b, h, batch, (cache, layer, tables), eps)?,
            (MixerBlock::DeltaNet(d), MixerState::Recurrent(st)) => {
                d.forward(b, &h, st, &batch.recurrent)?
            }
            _ => {
                return Err(StageError::Model(
                    "a layer's mixer was given another mixer's state".into(),
                ))
            }
        };
        if let Some(rows) = keep_rows {
            o = b.select_rows(&o, rows)?;
            x = b.select_rows(&x, rows)?;
        }
        if let Some(n) = &self.post_attn_norm {
            o = b.rms_norm(&o, n, eps)?;
        }
        b.add_assign(&mut x, &o)?;

        let normed = |n: &Option<B::Weight>| match n {
            Some(n) => b.rms_norm(&x, n, eps),
            None => Err(strata_kernels::KernelError::Invalid(
                "a feed-forward with no norm before it".into(),
            )),
        };
        let mut f = match &self.ffn {
            FfnBlock::Dense(ffn) => ffn.forward(b, &normed(&self.ffn_norm)?)?,
            FfnBlock::Moe(ffn) => ffn.forward(b, &normed(&self.ffn_norm)?)?,
            FfnBlock::DenseAndMoe(ffn) => ffn.forward(b, &x, eps)?,
        };
        if let Some(n) = &self.post_ffn_norm {
            f = b.rms_norm(&f, n, eps)?;
        }
        b.add_assign(&mut x, &f)?;
        if let Some(block) = &self.per_layer {
            let mut input = per_layer_input.ok_or_else(|| {
                StageError::Model("a layer with per-layer embeddings got no input".into())
            })?;
            if let Some(rows) = keep_rows {
                input = b.select_rows(&input, rows)?;
            }
            block.forward(b, &mut x, &input, eps)?;
        }
        if let Some(s) = &self.layer_scale {
            b.mul_weight(&mut x, s)?;
        }
        Ok(x)
    }

    pub fn spec(&self) -> &LayerSpec {
        &self.spec
    }
}
