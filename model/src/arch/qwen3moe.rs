//! Qwen3-MoE (Qwen3-30B-A3B, Qwen3-Coder-30B-A3B): Qwen3's attention, and
//! experts chosen by a softmax over all of them, top-k, weights normalised
//! (llama.cpp's qwen3moe graph hard-codes the normalisation).

use super::meta::Meta;
use super::{
    qwen3, Activation, ArchError, Architecture, ExpertGating, FeedForward, Globals, LayerSpec,
    Mixer, ModelSpec,
};

pub(super) fn spec(m: &Meta<'_>) -> Result<ModelSpec, ArchError> {
    let g = Globals::read(m, Architecture::Qwen3Moe)?;
    let attention = qwen3::attention(m, g.d_model)?;
    let mut moe = m.moe(Activation::Silu, ExpertGating::Softmax)?;
    moe.norm_weights = true;
    let ffn = FeedForward::Moe(moe);
    g.model(|_| LayerSpec {
        mixer: Mixer::Attention(attention.clone()),
        ffn: ffn.clone(),
        post_norms: false,
        layer_scale: false,
    })
}
