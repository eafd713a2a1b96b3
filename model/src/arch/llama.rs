//! Llama 2/3, Mistral, SmolLM: attention with adjacent-pair RoPE and a SwiGLU
//! feed-forward.

use super::meta::Meta;
use super::{
    Activation, ArchError, Architecture, FeedForward, Globals, LayerSpec, Mixer, ModelSpec,
    RopeStyle,
};

pub(super) fn spec(m: &Meta<'_>) -> Result<ModelSpec, ArchError> {
    let g = Globals::read(m, Architecture::Llama)?;
    // Mistral-style GGUFs may name a window; llama.cpp's llama graph ignores it.
    let attention = m.attention(g.d_model, RopeStyle::Normal)?;
    let ffn = FeedForward::Dense(m.dense(Activation::Silu)?);
    g.model(|_| LayerSpec {
        mixer: Mixer::Attention(attention.clone()),
        ffn: ffn.clone(),
        post_norms: false,
        layer_scale: false,
    })
}
