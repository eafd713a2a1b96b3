//! Qwen3 (dense): Qwen2's attention without biases, with per-head Q/K RMSNorm.

use super::meta::Meta;
use super::{
    Activation, ArchError, Architecture, AttentionSpec, FeedForward, Globals, LayerSpec, Mixer,
    ModelSpec, RopeStyle,
};

/// Qwen3's attention, shared with Qwen3-MoE.
pub(super) fn attention(m: &Meta<'_>, d_model: usize) -> Result<AttentionSpec, ArchError> {
    let mut attention = m.attention(d_model, RopeStyle::Neox)?;
    attention.qk_norm = true;
    Ok(attention)
}

pub(super) fn spec(m: &Meta<'_>) -> Result<ModelSpec, ArchError> {
    let g = Globals::read(m, Architecture::Qwen3)?;
    let attention = attention(m, g.d_model)?;
    let ffn = FeedForward::Dense(m.dense(Activation::Silu)?);
    g.model(|_| LayerSpec {
        mixer: Mixer::Attention(attention.clone()),
        ffn: ffn.clone(),
        post_norms: false,
        layer_scale: false,
    })
}
