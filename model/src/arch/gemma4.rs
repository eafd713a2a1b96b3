//! Gemma 4 (`gemma4`: 31B, 26B-A4B, E2B, E4B): sliding layers and global
//! layers of their own head dim, KV heads and RoPE; Q/K norms and a
//! weightless V norm, no score scale; global layers without `attn_v` take V
//! from K and turn part of each head through `rope_freqs`; a final logit
//! softcap; in MoE layers experts beside the dense MLP. The E-series adds
//! per-layer embeddings and trailing layers that read an earlier layer's
//! KV. llama.cpp: src/models/gemma4.cpp; the plan in
//! docs/plans/qwen35-gemma4.md §2.

use super::meta::Meta;
use super::{
    layer_tensor, Activation, ArchError, Architecture, AttentionSpec, DenseSpec, ExpertGating,
    FeedForward, Globals, LayerSpec, Mixer, ModelSpec, RopeSpec, RopeStyle,
};

/// llama.cpp's `f_final_logit_softcapping` when the key is absent.
const DEFAULT_FINAL_SOFTCAP: f32 = 30.0;

/// What a sliding or a global layer reads from its own keys.
struct LayerKind {
    head_dim: usize,
    rope_dims: usize,
    rope_base: f32,
    window: Option<usize>,
    freq_factors: bool,
}

pub(super) fn spec(m: &Meta<'_>) -> Result<ModelSpec, ArchError> {
    let g = Globals::read(m, Architecture::Gemma4)?;
    let n = g.n_layers;
    let sliding = m
        .opt_bool_per_layer("attention.sliding_window_pattern", n)?
        .ok_or_else(|| m.missing("attention.sliding_window_pattern"))?;
    let n_heads = m.per_layer_usize("attention.head_count", n)?;
    // Sliding and global layers' KV heads differ: an array, one per layer.
    let n_kv_heads = if m.file.get(&m.key("attention.head_count_kv")).is_some() {
        m.per_layer_usize("attention.head_count_kv", n)?
    } else {
        n_heads.clone()
    };
    // llama.cpp's default head dim: embedding_length / head_count.
    let n_heads_0 = n_heads.first().copied().unwrap_or(0);
    let default_head_dim = g.d_model.checked_div(n_heads_0).unwrap_or(0);
    if default_head_dim == 0 && m.opt_usize("attention.key_length").is_none() {
        return Err(m.invalid(format!(
            "a head dimension of 0 (embedding_length {} over attention.head_count {n_heads_0})",
            g.d_model
        )));
    }
    let head_dim = equal_lengths(
        m,
        ("attention.key_length", "attention.value_length"),
        Some(default_head_dim),
    )?;
    let global = LayerKind {
        head_dim,
        rope_dims: m.opt_usize("rope.dimension_count").unwrap_or(head_dim),
        rope_base: m.opt_f32("rope.freq_base").unwrap_or(10_000.0),
        window: None,
        freq_factors: true,
    };
    let local = LayerKind {
        head_dim: equal_lengths(
            m,
            ("attention.key_length_swa", "attention.value_length_swa"),
            None,
        )?,
        rope_dims: m
            .opt_usize("rope.dimension_count_swa")
            .unwrap_or(global.rope_dims),
        rope_base: m.opt_f32("rope.freq_base_swa").unwrap_or(10_000.0),
        window: Some(m.usize("attention.sliding_window")?),
        freq_factors: false,
    };
    let d_ff = m.per_layer_usize("feed_forward_length", n)?;
    let kv_sources = kv_sources(m, &sliding)?;
    let mut layers = Vec::with_capacity(n);
    for il in 0..n {
        let kind = if sliding[il] { &local } else { &global };
        let mut a = attention(m, kind, n_heads[il], n_kv_heads[il], il)?;
        if let Some(src) = kv_sources[il] {
            if n_kv_heads[src] != n_kv_heads[il] {
                return Err(m.invalid(format!(
                    "layer {il} reads the KV of layer {src}, which has {} KV heads, not {}",
                    n_kv_heads[src], n_kv_heads[il]
                )));
            }
            a.kv_source = Some(src);
            a.v_from_k = false;
        }
        layers.push(LayerSpec {
            mixer: Mixer::Attention(a),
            ffn: feed_forward(m, d_ff[il], il)?,
            post_norms: true,
            layer_scale: m.has_tensor(&layer_tensor(il, "layer_output_scale.weight")),
        });
    }
    let d_model = g.d_model;
    let mut spec = g.model(|il| layers[il].clone())?;
    spec.embedding_scale = Some((d_model as f32).sqrt());
    spec.out_rows_after_attention = false;
    spec.final_softcap = Some(
        m.opt_f32("final_logit_softcapping")
            .unwrap_or(DEFAULT_FINAL_SOFTCAP),
    );
    // llama.cpp requires the key; 0 is "no per-layer embeddings".
    let ple = m
        .opt_usize("embedding_length_per_layer_input")
        .ok_or_else(|| m.missing("embedding_length_per_layer_input"))?;
    spec.per_layer_input = (ple > 0).then_some(ple);
    Ok(spec)
}

/// The layer each layer reads its KV from, where it does not own one: the
/// trailing `attention.shared_kv_layers` layers read the last sliding
/// (`n_kv − 2`) or the last global (`n_kv − 1`) owning layer, as
/// llama.cpp's `reuse` callback (llama-model.cpp, `create_memory`) maps
/// them; that layer must be of the same kind.
fn kv_sources(m: &Meta<'_>, sliding: &[bool]) -> Result<Vec<Option<usize>>, ArchError> {
    let n = sliding.len();
    let shared = m.opt_usize("attention.shared_kv_layers").unwrap_or(0);
    if shared == 0 {
        return Ok(vec![None; n]);
    }
    let owning = n.checked_sub(shared).filter(|&k| k >= 2).ok_or_else(|| {
        m.invalid(format!(
            "attention.shared_kv_layers {shared} leaves fewer than 2 of {n} layers with KV"
        ))
    })?;
    (0..n)
        .map(|il| {
            if il < owning {
                return Ok(None);
            }
            let src = if sliding[il] { owning - 2 } else { owning - 1 };
            if sliding[src] != sliding[il] {
                let kind = |s: bool| if s { "sliding" } else { "global" };
                return Err(m.invalid(format!(
                    "{} layer {il} would read the KV of {} layer {src}",
                    kind(sliding[il]),
                    kind(sliding[src])
                )));
            }
            Ok(Some(src))
        })
        .collect()
}

/// A head dim whose key and value lengths llama.cpp requires equal; where
/// `default` is given the keys are optional.
fn equal_lengths(
    m: &Meta<'_>,
    (k, v): (&str, &str),
    default: Option<usize>,
) -> Result<usize, ArchError> {
    let read = |key: &str| match (m.opt_usize(key).filter(|&n| n > 0), default) {
        (Some(n), _) => Ok(n),
        (None, Some(n)) if n > 0 => Ok(n),
        _ => Err(m.missing(key)),
    };
    let (kd, vd) = (read(k)?, read(v)?);
    if kd != vd {
        return Err(m.invalid(format!("{k} {kd} differs from {v} {vd}")));
    }
    Ok(kd)
}

fn attention(
    m: &Meta<'_>,
    kind: &LayerKind,
    n_heads: usize,
    n_kv_heads: usize,
    il: usize,
) -> Result<AttentionSpec, ArchError> {
    if n_heads == 0 || n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
        return Err(m.invalid(format!(
            "layer {il}: {n_heads} attention heads are not a multiple of {n_kv_heads} KV heads"
        )));
    }
    if kind.rope_dims > kind.head_dim || !kind.rope_dims.is_multiple_of(2) {
        return Err(m.invalid(format!(
            "layer {il}: rope dimension {} vs head dim {}",
            kind.rope_dims, kind.head_dim
        )));
    }
    Ok(AttentionSpec {
        n_heads,
        n_kv_heads,
        head_dim: kind.head_dim,
        head_dim_v: kind.head_dim,
        rope: RopeSpec {
            style: RopeStyle::Neox,
            dims: kind.rope_dims,
            freq_base: kind.rope_base,
            freq_scale: 1.0,
            yarn: None,
            sections: None,
            freq_factors: kind.freq_factors,
        },
        window: kind.window,
        // llama.cpp hard-codes f_attention_scale = 1 for gemma4.
        scale: 1.0,
        scale_query: false,
        qk_norm: true,
        qkv_bias: false,
        out_bias: false,
        sinks: false,
        temperature: None,
        output_gate: false,
        v_norm: true,
        v_from_k: !m.has_tensor(&layer_tensor(il, "attn_v.weight")),
        kv_source: None,
    })
}

/// The dense GELU MLP, with experts beside it where the layer has a router.
fn feed_forward(m: &Meta<'_>, d_ff: usize, il: usize) -> Result<FeedForward, ArchError> {
    let dense = DenseSpec {
        d_ff,
        activation: Activation::GeluTanh,
        norm_name: "ffn_norm",
    };
    if !m.has_tensor(&layer_tensor(il, "ffn_gate_inp.weight")) {
        return Ok(FeedForward::Dense(dense));
    }
    let mut moe = m.moe(Activation::GeluTanh, ExpertGating::Softmax)?;
    moe.norm_weights = true;
    // build_moe_ffn gets w_scale 1: no scaling.
    moe.weights_scale = 1.0;
    moe.norm_name = "pre_ffw_norm_2";
    moe.dense_beside = Some(dense);
    moe.expert_out_scale = m.has_tensor(&layer_tensor(il, "ffn_down_exps.scale"));
    Ok(FeedForward::Moe(moe))
}
