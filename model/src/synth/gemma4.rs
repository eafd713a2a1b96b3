//! Gemma 4 (`gemma4`): the keys and tensors `llama_model_gemma4`
//! (llama.cpp src/models/gemma4.cpp) reads. Sliding and global layers differ
//! in head dim and KV heads; global layers have no `attn_v` (V is the K
//! projection) and turn only part of each head with RoPE, through
//! `rope_freqs`. With experts, a layer runs them beside its dense MLP. The
//! E-series adds per-layer embeddings and trailing layers without K/V
//! projections that read an earlier layer's KV.

use std::io::{self, Write};

use crate::gguf::{GgufWriteError, GgufWriter, MetaValue};
use crate::quant::GgmlType;

use super::{add_expert_tensors, add_tensor, Gemma4Shape, Shape, SynthSpec};

/// Whether layer `il` slides (`[T, T, T, T, T, F]` repeated for a period of 6).
pub(super) fn is_sliding(g: Gemma4Shape, il: usize) -> bool {
    !(il + 1).is_multiple_of(g.global_every)
}

pub(super) fn add_metadata(
    w: &mut GgufWriter,
    key: &dyn Fn(&str) -> String,
    s: &Shape,
    g: Gemma4Shape,
) {
    let u32_of = |v: usize| MetaValue::U32(v as u32);
    let kv_heads = (0..s.n_layers)
        .map(|il| {
            u32_of(if is_sliding(g, il) {
                g.n_kv_heads_swa
            } else {
                s.n_kv_heads
            })
        })
        .collect();
    w.add_metadata(key("attention.head_count_kv"), MetaValue::Array(kv_heads));
    let pattern = (0..s.n_layers)
        .map(|il| MetaValue::Bool(is_sliding(g, il)))
        .collect();
    w.add_metadata(
        key("attention.sliding_window_pattern"),
        MetaValue::Array(pattern),
    );
    w.add_metadata(key("attention.key_length_swa"), u32_of(g.head_dim_swa));
    w.add_metadata(key("attention.value_length_swa"), u32_of(g.head_dim_swa));
    w.add_metadata(key("rope.dimension_count_swa"), u32_of(g.head_dim_swa));
    w.add_metadata(key("rope.freq_base_swa"), MetaValue::F32(g.rope_base_swa));
    w.add_metadata(
        key("attention.shared_kv_layers"),
        u32_of(g.shared_kv_layers),
    );
    w.add_metadata(
        key("embedding_length_per_layer_input"),
        u32_of(g.per_layer_input),
    );
    w.add_metadata(
        key("final_logit_softcapping"),
        MetaValue::F32(g.final_softcap),
    );
}

/// `rope_freqs.weight`: one frequency factor per pair of a global head.
pub(super) fn add_rope_freqs(w: &mut GgufWriter, s: &Shape) -> Result<(), GgufWriteError> {
    add_tensor(
        w,
        "rope_freqs.weight".into(),
        &[s.head_dim / 2],
        GgmlType::F32,
    )
}

/// 1.0 for the pairs RoPE turns, 1e30 (no rotation) for the rest, as
/// llama.cpp's converter writes them (`Gemma4Model.generate_extra_tensors`).
pub(super) fn write_rope_freqs(s: &Shape, g: Gemma4Shape, out: &mut dyn Write) -> io::Result<()> {
    let pairs = s.head_dim / 2;
    let turned = (pairs as f32 * g.global_rope_fraction).round() as usize;
    for i in 0..pairs {
        let f: f32 = if i < turned { 1.0 } else { 1e30 };
        out.write_all(&f.to_le_bytes())?;
    }
    Ok(())
}

/// The per-layer embedding tables (`llama_model_gemma4::load_arch_tensors`),
/// when the shape has them.
pub(super) fn add_per_layer_tables(
    w: &mut GgufWriter,
    s: &Shape,
    g: Gemma4Shape,
    wt: impl Fn(&str) -> GgmlType,
) -> Result<(), GgufWriteError> {
    let p = g.per_layer_input;
    if p == 0 {
        return Ok(());
    }
    let all = p * s.n_layers;
    add_tensor(
        w,
        "per_layer_token_embd.weight".into(),
        &[all, s.vocab_size],
        wt("token_embd"),
    )?;
    add_tensor(
        w,
        "per_layer_model_proj.weight".into(),
        &[s.d_model, all],
        wt("per_layer_model_proj"),
    )?;
    add_tensor(w, "per_layer_proj_norm.weight".into(), &[p], GgmlType::F32)
}

pub(super) fn add_layer(
    spec: &SynthSpec,
    w: &mut GgufWriter,
    il: usize,
    g: Gemma4Shape,
) -> Result<(), GgufWriteError> {
    let s = &spec.shape;
    let wt = |role: &str| spec.quant.weight_type(role, Some(il), s.n_layers);
    let b = |name: &str| format!("blk.{il}.{name}");
    let f32 = GgmlType::F32;
    let d = s.d_model;
    let sliding = is_sliding(g, il);
    let (hd, n_kv) = if sliding {
        (g.head_dim_swa, g.n_kv_heads_swa)
    } else {
        (s.head_dim, s.n_kv_heads)
    };
    let (q, kv) = (s.n_heads * hd, n_kv * hd);
    // The trailing shared-KV layers project only Q.
    let owns_kv = il + g.shared_kv_layers < s.n_layers;
    add_tensor(w, b("attn_norm.weight"), &[d], f32)?;
    add_tensor(w, b("attn_q.weight"), &[d, q], wt("attn_q"))?;
    if owns_kv {
        add_tensor(w, b("attn_k.weight"), &[d, kv], wt("attn_k"))?;
    }
    // Global layers take V from the K projection.
    if sliding && owns_kv {
        add_tensor(w, b("attn_v.weight"), &[d, kv], wt("attn_v"))?;
    }
    add_tensor(w, b("attn_output.weight"), &[q, d], wt("attn_output"))?;
    add_tensor(w, b("attn_q_norm.weight"), &[hd], f32)?;
    if owns_kv {
        add_tensor(w, b("attn_k_norm.weight"), &[hd], f32)?;
    }
    add_tensor(w, b("post_attention_norm.weight"), &[d], f32)?;
    add_tensor(w, b("layer_output_scale.weight"), &[1], f32)?;
    let ff = s.d_ff;
    add_tensor(w, b("ffn_norm.weight"), &[d], f32)?;
    add_tensor(w, b("ffn_gate.weight"), &[d, ff], wt("ffn_gate"))?;
    add_tensor(w, b("ffn_up.weight"), &[d, ff], wt("ffn_up"))?;
    add_tensor(w, b("ffn_down.weight"), &[ff, d], wt("ffn_down"))?;
    add_tensor(w, b("post_ffw_norm.weight"), &[d], f32)?;
    if let Some(e) = s.experts {
        let (ff, ne) = (e.d_ff, e.count);
        add_tensor(w, b("ffn_gate_inp.weight"), &[d, ne], f32)?;
        add_tensor(w, b("ffn_gate_inp.scale"), &[d], f32)?;
        add_tensor(w, b("pre_ffw_norm_2.weight"), &[d], f32)?;
        add_tensor(w, b("post_ffw_norm_1.weight"), &[d], f32)?;
        add_tensor(w, b("post_ffw_norm_2.weight"), &[d], f32)?;
        add_expert_tensors(w, il, (d, ff, ne), wt)?;
        add_tensor(w, b("ffn_down_exps.scale"), &[ne], f32)?;
    }
    let p = g.per_layer_input;
    if p > 0 {
        add_tensor(w, b("inp_gate.weight"), &[d, p], wt("per_layer_inp_gate"))?;
        add_tensor(w, b("proj.weight"), &[p, d], wt("per_layer_proj"))?;
        add_tensor(w, b("post_norm.weight"), &[d], f32)?;
    }
    Ok(())
}
