//! Qwen2: half-split RoPE and Q/K/V biases.

use super::meta::Meta;
use super::{
    Activation, ArchError, Architecture, FeedForward, Globals, LayerSpec, Mixer, ModelSpec,
    RopeStyle,
};

pub(super) fn spec(m: &Meta<'_>) -> Result<ModelSpec, ArchError> {
    let g = Globals::read(m, Architecture::Qwen2)?;
    let mut attention = m.attention(g.d_model, RopeStyle::Neox)?;
    attention.qkv_bias = true;
    let ffn = FeedForward::Dense(m.dense(Activation::Silu)?);
    g.model(|_| LayerSpec {
        mixer: Mixer::Attention(attention.clone()),
        ffn: ffn.clone(),
        post_norms: false,
        layer_scale: false,
    })
}
