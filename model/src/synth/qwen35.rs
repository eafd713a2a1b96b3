//! Qwen3.5 / 3.6 (`qwen35`, `qwen35moe`): the `ssm.*` keys and the tensors
//! of its two layer kinds, as `llama_model_qwen35(moe)::load_arch_tensors`
//! (llama.cpp src/models/qwen35*.cpp) creates them.

use crate::gguf::{GgufWriteError, GgufWriter, MetaValue};
use crate::quant::GgmlType;

use super::{add_expert_tensors, add_tensor, DeltaNetShape, SynthSpec};

pub(super) fn add_metadata(w: &mut GgufWriter, key: &dyn Fn(&str) -> String, dn: DeltaNetShape) {
    let u32_of = |v: usize| MetaValue::U32(v as u32);
    w.add_metadata(key("ssm.conv_kernel"), u32_of(dn.d_conv));
    w.add_metadata(key("ssm.state_size"), u32_of(dn.d_state));
    w.add_metadata(key("ssm.group_count"), u32_of(dn.n_k_heads));
    w.add_metadata(key("ssm.time_step_rank"), u32_of(dn.n_v_heads));
    w.add_metadata(key("ssm.inner_size"), u32_of(dn.d_state * dn.n_v_heads));
    if dn.mtp_layers > 0 {
        w.add_metadata(key("nextn_predict_layers"), u32_of(dn.mtp_layers));
    }
    w.add_metadata(
        key("full_attention_interval"),
        u32_of(dn.full_attention_interval),
    );
    // llama.cpp reads the sections into an int array: INT32 elements.
    w.add_metadata(
        key("rope.dimension_sections"),
        MetaValue::Array(
            dn.rope_sections
                .iter()
                .map(|&v| MetaValue::I32(v))
                .collect(),
        ),
    );
}

/// Whether layer `il` is a DeltaNet layer (llama.cpp's rule when the file
/// has no `attention.recurrent_layers`).
pub(super) fn is_recurrent(dn: DeltaNetShape, il: usize) -> bool {
    !(il + 1).is_multiple_of(dn.full_attention_interval)
}

/// A multi-token-prediction block (`load_block_mtp`): a gated full-attention
/// layer with the trunk's feed-forward, and the `nextn.*` tensors that feed
/// it the embedding of the next token beside the trunk's hidden state.
pub(super) fn add_mtp_layer(
    spec: &SynthSpec,
    w: &mut GgufWriter,
    il: usize,
) -> Result<(), GgufWriteError> {
    let s = &spec.shape;
    let Some(dn) = s.delta_net else {
        return Ok(());
    };
    // The attention layer of the trunk's layout, under the MTP index.
    let attention = DeltaNetShape {
        full_attention_interval: 1,
        ..dn
    };
    add_layer(spec, w, il, attention)?;
    let d = s.d_model;
    let b = |name: &str| format!("blk.{il}.nextn.{name}");
    let wt = spec
        .quant
        .weight_type("nextn_eh_proj", Some(il), s.n_layers);
    add_tensor(w, b("eh_proj.weight"), &[2 * d, d], wt)?;
    add_tensor(w, b("enorm.weight"), &[d], GgmlType::F32)?;
    add_tensor(w, b("hnorm.weight"), &[d], GgmlType::F32)?;
    add_tensor(w, b("shared_head_norm.weight"), &[d], GgmlType::F32)
}

pub(super) fn add_layer(
    spec: &SynthSpec,
    w: &mut GgufWriter,
    il: usize,
    dn: DeltaNetShape,
) -> Result<(), GgufWriteError> {
    let s = &spec.shape;
    let wt = |role: &str| spec.quant.weight_type(role, Some(il), s.n_layers);
    let b = |name: &str| format!("blk.{il}.{name}");
    let f32 = GgmlType::F32;
    let d = s.d_model;
    add_tensor(w, b("attn_norm.weight"), &[d], f32)?;
    // The pre-feed-forward norm, named after the mixer.
    add_tensor(w, b("post_attention_norm.weight"), &[d], f32)?;
    if is_recurrent(dn, il) {
        let key_dim = dn.d_state * dn.n_k_heads;
        let value_dim = dn.d_state * dn.n_v_heads;
        let conv_dim = 2 * key_dim + value_dim;
        let h_v = dn.n_v_heads;
        add_tensor(w, b("attn_qkv.weight"), &[d, conv_dim], wt("attn_qkv"))?;
        add_tensor(w, b("attn_gate.weight"), &[d, value_dim], wt("attn_gate"))?;
        // ggml's ssm_conv runs on F32 only.
        add_tensor(w, b("ssm_conv1d.weight"), &[dn.d_conv, conv_dim], f32)?;
        add_tensor(w, b("ssm_dt.bias"), &[h_v], f32)?;
        add_tensor(w, b("ssm_a"), &[h_v], f32)?;
        add_tensor(w, b("ssm_beta.weight"), &[d, h_v], wt("ssm_beta"))?;
        add_tensor(w, b("ssm_alpha.weight"), &[d, h_v], wt("ssm_alpha"))?;
        add_tensor(w, b("ssm_norm.weight"), &[dn.d_state], f32)?;
        add_tensor(w, b("ssm_out.weight"), &[value_dim, d], wt("ssm_out"))?;
    } else {
        // Q rows hold each head's query then its output gate.
        let (hd, kv) = (s.head_dim, s.n_kv_heads * s.head_dim);
        let q = s.n_heads * hd;
        add_tensor(w, b("attn_q.weight"), &[d, 2 * q], wt("attn_q"))?;
        add_tensor(w, b("attn_k.weight"), &[d, kv], wt("attn_k"))?;
        add_tensor(w, b("attn_v.weight"), &[d, kv], wt("attn_v"))?;
        add_tensor(w, b("attn_output.weight"), &[q, d], wt("attn_output"))?;
        add_tensor(w, b("attn_q_norm.weight"), &[hd], f32)?;
        add_tensor(w, b("attn_k_norm.weight"), &[hd], f32)?;
    }
    match s.experts {
        None => {
            let ff = s.d_ff;
            add_tensor(w, b("ffn_gate.weight"), &[d, ff], wt("ffn_gate"))?;
            add_tensor(w, b("ffn_up.weight"), &[d, ff], wt("ffn_up"))?;
            add_tensor(w, b("ffn_down.weight"), &[ff, d], wt("ffn_down"))?;
        }
        Some(e) => {
            let (ff, ne) = (e.d_ff, e.count);
            add_tensor(w, b("ffn_gate_inp.weight"), &[d, ne], f32)?;
            add_expert_tensors(w, il, (d, ff, ne), wt)?;
            let sh = e.shared_d_ff.unwrap_or(s.d_ff);
            // The shared expert's gate is one row: a per-token scalar.
            add_tensor(w, b("ffn_gate_inp_shexp.weight"), &[d], f32)?;
            add_tensor(
                w,
                b("ffn_gate_shexp.weight"),
                &[d, sh],
                wt("ffn_gate_shexp"),
            )?;
            add_tensor(w, b("ffn_up_shexp.weight"), &[d, sh], wt("ffn_up_shexp"))?;
            add_tensor(
                w,
                b("ffn_down_shexp.weight"),
                &[sh, d],
                wt("ffn_down_shexp"),
            )?;
        }
    }
    Ok(())
}
