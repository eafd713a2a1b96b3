//! Gemma-3: five sliding-window layers per global one, Q/K norms, norms after
//! attention and feed-forward, GELU, embeddings scaled by sqrt(d_model).

use super::meta::Meta;
use super::{
    Activation, ArchError, Architecture, FeedForward, Globals, LayerSpec, Mixer, ModelSpec,
    RopeStyle,
};

pub(super) fn spec(m: &Meta<'_>) -> Result<ModelSpec, ArchError> {
    let g = Globals::read(m, Architecture::Gemma3)?;
    let mut global = m.attention(g.d_model, RopeStyle::Neox)?;
    global.qk_norm = true;
    // llama.cpp's Gemma graph scales Q, not the scores (it rounds Q to f16
    // after scaling).
    global.scale_query = true;
    // llama.cpp hard-codes these for gemma3: five sliding layers per global
    // one, local RoPE base 10000.
    let mut local = global.clone();
    local.window = m.sliding_window();
    local.rope.freq_base = m.opt_f32("rope.freq_base_swa").unwrap_or(10_000.0);
    let sliding = m.sliding_layers(g.n_layers, 6);
    let ffn = FeedForward::Dense(m.dense(Activation::GeluTanh)?);
    let d_model = g.d_model;
    let mut spec = g.model(|il| LayerSpec {
        mixer: Mixer::Attention(if sliding[il] && local.window.is_some() {
            local.clone()
        } else {
            global.clone()
        }),
        ffn: ffn.clone(),
        post_norms: true,
        layer_scale: false,
    })?;
    spec.embedding_scale = Some((d_model as f32).sqrt());
    Ok(spec)
}
