//! Ministral-3 (dense): Llama's layer with YaRN RoPE, an optional output
//! bias, and position-dependent Q scaling (temperature tuning) when the file
//! names `attention.temperature_scale`. llama.cpp: src/models/mistral3.cpp.

use super::meta::Meta;
use super::{
    Activation, ArchError, Architecture, AttnTemperature, FeedForward, Globals, LayerSpec, Mixer,
    ModelSpec, RopeStyle,
};

pub(super) fn spec(m: &Meta<'_>) -> Result<ModelSpec, ArchError> {
    let g = Globals::read(m, Architecture::Mistral3)?;
    if m.opt_usize("expert_count").is_some_and(|n| n > 0) {
        return Err(m.invalid("mistral3 with experts is not supported yet"));
    }
    let mut attention = m.attention(g.d_model, RopeStyle::Normal)?;
    attention.out_bias = true;
    if let Some(scale) = m
        .opt_f32("attention.temperature_scale")
        .filter(|&s| s != 0.0)
    {
        // llama.cpp floors positions by the YaRN original context.
        let floor_scale = attention
            .rope
            .yarn
            .map(|y| y.n_ctx_orig)
            .unwrap_or(g.context_length);
        attention.temperature = Some(AttnTemperature { floor_scale, scale });
    }
    if let Some(s) = m.opt_f32("attention.scale").filter(|&s| s != 0.0) {
        attention.scale = s;
    }
    let ffn = FeedForward::Dense(m.dense(Activation::Silu)?);
    g.model(|_| LayerSpec {
        mixer: Mixer::Attention(attention.clone()),
        ffn: ffn.clone(),
        post_norms: false,
        layer_scale: false,
    })
}
