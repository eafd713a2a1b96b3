//! Qwen3.5 / 3.6 (`qwen35`, `qwen35moe`): three gated-DeltaNet layers per
//! gated full-attention layer, a post-attention norm before the
//! feed-forward, and for the MoE a sigmoid-gated shared expert beside the
//! routed ones. llama.cpp: src/models/qwen35.cpp, qwen35moe.cpp; the plan in
//! docs/plans/qwen35-gemma4.md §1.

use super::meta::Meta;
use super::{
    Activation, ArchError, Architecture, DeltaNetSpec, ExpertGating, FeedForward, Globals,
    LayerSpec, Mixer, ModelSpec, RopeStyle, SharedExpert,
};

/// llama.cpp's default when the file states no `full_attention_interval`.
const DEFAULT_FULL_ATTENTION_INTERVAL: usize = 4;

pub(super) fn spec(m: &Meta<'_>, arch: Architecture) -> Result<ModelSpec, ArchError> {
    let mut g = Globals::read(m, arch)?;
    // `block_count` counts the multi-token-prediction layers after the
    // trunk; llama.cpp's main pass never runs them.
    let nextn = m.opt_usize("nextn_predict_layers").unwrap_or(0);
    if nextn >= g.n_layers {
        return Err(m.invalid(format!(
            "nextn_predict_layers {nextn} leaves no trunk of block_count {}",
            g.n_layers
        )));
    }
    let n_layers_all = g.n_layers;
    g.n_layers -= nextn;
    let recurrent = recurrent_layers(m, g.n_layers, n_layers_all)?;
    let delta_net = DeltaNetSpec {
        d_conv: m.usize("ssm.conv_kernel")?,
        d_state: m.usize("ssm.state_size")?,
        n_k_heads: m.usize("ssm.group_count")?,
        n_v_heads: m.usize("ssm.time_step_rank")?,
        d_inner: m.usize("ssm.inner_size")?,
        eps: g.rms_eps,
    };
    let mut attention = m.attention(g.d_model, RopeStyle::Neox)?;
    if attention.head_dim != attention.head_dim_v {
        return Err(m.invalid(format!(
            "key_length {} differs from value_length {} (llama.cpp requires them equal)",
            attention.head_dim, attention.head_dim_v
        )));
    }
    attention.qk_norm = true;
    attention.output_gate = true;
    let sections = m.usize_array::<4>("rope.dimension_sections")?;
    check_imrope_is_neox(sections, attention.rope.dims).map_err(|what| m.invalid(what))?;
    attention.rope.sections = Some(sections);
    let ffn = if arch == Architecture::Qwen35Moe {
        let mut moe = m.moe(Activation::Silu, ExpertGating::Softmax)?;
        moe.norm_weights = true;
        // Not read for these architectures: llama.cpp's scale stays 0.
        moe.weights_scale = 0.0;
        moe.norm_name = "post_attention_norm";
        let d_ff = m
            .opt_usize("expert_shared_feed_forward_length")
            .filter(|&n| n > 0)
            .map_or_else(|| m.usize("feed_forward_length"), Ok)?;
        moe.shared = Some(SharedExpert { d_ff });
        FeedForward::Moe(moe)
    } else {
        let mut dense = m.dense(Activation::Silu)?;
        dense.norm_name = "post_attention_norm";
        FeedForward::Dense(dense)
    };
    let layer = |mixer| LayerSpec {
        mixer,
        ffn: ffn.clone(),
        post_norms: false,
        layer_scale: false,
    };
    let mut spec = g.model(|il| {
        layer(if recurrent[il] {
            Mixer::DeltaNet(delta_net.clone())
        } else {
            Mixer::Attention(attention.clone())
        })
    })?;
    // Each MTP block is a gated full-attention layer with the trunk's
    // feed-forward (`load_block_mtp`).
    spec.mtp_layers = vec![layer(Mixer::Attention(attention.clone())); nextn];
    // Rows for the head are picked after the output norm.
    spec.out_rows_after_attention = false;
    Ok(spec)
}

/// Which trunk layers are DeltaNet: `attention.recurrent_layers` where the
/// file has it (one entry per block, MTP ones included), else every layer
/// but each `full_attention_interval`-th.
fn recurrent_layers(
    m: &Meta<'_>,
    n_layers: usize,
    n_layers_all: usize,
) -> Result<Vec<bool>, ArchError> {
    if let Some(mut flags) = m.opt_bool_per_layer("attention.recurrent_layers", n_layers_all)? {
        flags.truncate(n_layers);
        return Ok(flags);
    }
    let interval = match m.opt_usize("full_attention_interval") {
        None => DEFAULT_FULL_ATTENTION_INTERVAL,
        Some(0) => return Err(m.invalid("full_attention_interval 0")),
        Some(n) => n,
    };
    Ok((0..n_layers)
        .map(|il| !(il + 1).is_multiple_of(interval))
        .collect())
}

/// IMRoPE gives each rotated pair the angle of the section its index falls
/// in (ggml's `ggml_mrope_cache_init`: pair i, sector i mod Σsections,
/// t/h/w by sector mod 3 while under 3 × that section). A text token's
/// t, h and w positions are all its position, so when every pair lands in
/// t, h or w the rotation is NeoX RoPE over `n_rot` dims; a pair falling to
/// the fourth section would get position 0, which no strata kernel does.
pub(super) fn check_imrope_is_neox(sections: [usize; 4], n_rot: usize) -> Result<(), String> {
    let period: usize = sections.iter().sum();
    if period == 0 {
        return Err("rope.dimension_sections are all 0".into());
    }
    for pair in 0..n_rot / 2 {
        let sector = pair % period;
        let text = (0..3).any(|s| sector % 3 == s && sector < 3 * sections[s]);
        if !text {
            return Err(format!(
                "rope.dimension_sections {sections:?} give rotated pair {pair} of {n_rot} dims no text position"
            ));
        }
    }
    Ok(())
}
