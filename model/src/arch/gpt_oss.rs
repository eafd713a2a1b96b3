//! gpt-oss (20b, 120b): attention with biases and sinks on every other layer
//! sliding (window 128), YaRN RoPE, experts with biases, chosen by top-k of
//! the router logits and weighted by a softmax over the chosen, through a
//! clamped SwiGLU. llama.cpp's graph: src/models/openai-moe.cpp.

use super::meta::Meta;
use super::{
    Activation, ArchError, Architecture, ExpertGating, FeedForward, Globals, LayerSpec, Mixer,
    ModelSpec, RopeStyle,
};

pub(super) fn spec(m: &Meta<'_>) -> Result<ModelSpec, ArchError> {
    let g = Globals::read(m, Architecture::GptOss)?;
    let mut global = m.attention(g.d_model, RopeStyle::Neox)?;
    global.qkv_bias = true;
    global.out_bias = true;
    global.sinks = true;
    let mut local = global.clone();
    local.window = Some(
        m.sliding_window()
            .ok_or_else(|| m.missing("attention.sliding_window"))?,
    );
    if let Some(base) = m.opt_f32("rope.freq_base_swa") {
        local.rope.freq_base = base;
    }
    // llama.cpp: load_swa_pattern(ml, 2), even layers slide.
    let sliding = m.sliding_layers(g.n_layers, 2);
    let mut moe = m.moe(Activation::SwigluOai, ExpertGating::SoftmaxWeight)?;
    moe.router_bias = true;
    moe.expert_bias = true;
    // gpt-oss's pre-feed-forward norm is stored as the post-attention norm.
    moe.norm_name = "post_attention_norm";
    let ffn = FeedForward::Moe(moe);
    let mut spec = g.model(|il| LayerSpec {
        mixer: Mixer::Attention(if sliding[il] {
            local.clone()
        } else {
            global.clone()
        }),
        ffn: ffn.clone(),
        post_norms: false,
        layer_scale: false,
    })?;
    // Its graph keeps every row through the last layer and selects after.
    spec.out_rows_after_attention = false;
    Ok(spec)
}
