//! Qwen3.5's multi-token-prediction head (`nextn`, llama.cpp's
//! `load_block_mtp` and `graph_mtp`): a gated full-attention block that
//! reads `eh_proj · [enorm(embed(next token)); hnorm(trunk hidden state)]`
//! and drafts the token after next through the output head.
//!
//! The last stage loads it so its memory is counted where it will run; the
//! main pass never runs it. Drafting with it needs a KV pool of its own
//! and a verify step (docs/plans/qwen35-gemma4.md §10).

use strata_kernels::Backend;
use strata_model::arch::{layer_tensor, ModelSpec};

use super::Layer;
use crate::stage::StageError;
use crate::weights::WeightLoader;

pub struct MtpHead<B: Backend> {
    /// The block, as a layer of the trunk's kind.
    pub block: Layer<B>,
    /// `[2·d_model → d_model]` over the normed embedding and hidden state.
    pub eh_proj: B::Weight,
    pub enorm: B::Weight,
    pub hnorm: B::Weight,
    /// Its own embedding and head, where the file has them (else the
    /// model's).
    pub embed_tokens: Option<B::Weight>,
    pub head_norm: Option<B::Weight>,
    pub head: Option<B::Weight>,
}

impl<B: Backend> MtpHead<B> {
    /// The MTP blocks of `model` (none for most models).
    pub fn load_all(
        loader: &WeightLoader<'_, B>,
        model: &ModelSpec,
    ) -> Result<Vec<Self>, StageError> {
        let (n, d, vocab) = (model.n_layers, model.d_model, model.vocab_size);
        (n..n + model.mtp_layers.len())
            .map(|il| {
                let t = |name: &str| layer_tensor(il, &format!("nextn.{name}"));
                Ok(MtpHead {
                    block: Layer::load(loader, model, il)?,
                    eh_proj: loader.required(&t("eh_proj.weight"), &[2 * d, d])?,
                    enorm: loader.required(&t("enorm.weight"), &[d])?,
                    hnorm: loader.required(&t("hnorm.weight"), &[d])?,
                    embed_tokens: loader.optional(&t("embed_tokens.weight"), &[d, vocab])?,
                    head_norm: loader.optional(&t("shared_head_norm.weight"), &[d])?,
                    head: loader.optional(&t("shared_head_head.weight"), &[d, vocab])?,
                })
            })
            .collect()
    }
}
