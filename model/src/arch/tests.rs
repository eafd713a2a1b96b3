//! Qwen3.5 and Gemma 4 specs read from `strata synth` files. The expected
//! values are llama.cpp's rules and the numbers of docs/plans/qwen35-gemma4.md
//! (which layers are recurrent, state sizes per sequence, per-layer heads),
//! worked out by hand here, not read back from our own parser.

use super::*;
use crate::gguf::{GgufWriter, MetaValue};
use crate::quant::GgmlType;
use crate::synth::{QuantScheme, SynthSpec};

fn writer(arch: Architecture, preset: &str) -> GgufWriter {
    SynthSpec::from_preset(arch, preset, QuantScheme::Uniform(GgmlType::Q8_0))
        .expect("preset")
        .writer()
        .expect("writer")
}

fn spec_of(w: &GgufWriter) -> Result<ModelSpec, ArchError> {
    ModelSpec::from_gguf(&w.layout("<test>").expect("layout"))
}

fn spec(arch: Architecture, preset: &str) -> ModelSpec {
    spec_of(&writer(arch, preset)).unwrap_or_else(|e| panic!("{arch} {preset}: {e}"))
}

fn recurrent_layers(s: &ModelSpec) -> Vec<usize> {
    (0..s.n_layers)
        .filter(|&il| s.delta_net(il).is_some())
        .collect()
}

#[test]
fn qwen35_tiny_has_three_deltanet_layers_then_gated_attention() {
    for arch in [Architecture::Qwen35, Architecture::Qwen35Moe] {
        let s = spec(arch, "tiny");
        assert_eq!(s.n_layers, 4);
        // (il + 1) % 4 != 0 is recurrent.
        assert_eq!(recurrent_layers(&s), [0, 1, 2], "{arch}");
        let d = s.delta_net(0).unwrap();
        assert_eq!(
            *d,
            DeltaNetSpec {
                d_conv: 4,
                d_state: 128,
                n_k_heads: 2,
                n_v_heads: 4,
                d_inner: 512,
                eps: 1e-6,
            }
        );
        // q and k: 2 heads × 128 each, v: 512.
        assert_eq!(d.conv_dim(), 1024);
        assert_eq!(d.conv_state_len(), 3 * 1024);
        assert_eq!(d.ssm_state_len(), 128 * 512);
        let a = s.attention(3).unwrap();
        assert_eq!(
            (a.n_heads, a.n_kv_heads, a.head_dim, a.head_dim_v),
            (4, 2, 64, 64)
        );
        assert_eq!(a.rope.style, RopeStyle::Neox);
        assert_eq!(a.rope.dims, 16);
        assert_eq!(a.rope.sections, Some([3, 3, 2, 0]));
        assert_eq!(a.rope.freq_base, 1e7);
        assert!(a.output_gate && a.qk_norm && !a.v_norm && a.window.is_none());
        assert_eq!(a.scale, 1.0 / 8.0);
        assert!(!s.out_rows_after_attention);
        assert_eq!(s.final_softcap, None);
        // f32 conv + SSM state of the three DeltaNet layers.
        assert_eq!(
            s.recurrent_state_bytes_per_seq(),
            3 * 4 * (3 * 1024 + 128 * 512)
        );
        for l in &s.layers {
            assert!(!l.post_norms && !l.layer_scale);
        }
    }
}

#[test]
fn qwen35_feed_forwards() {
    let dense = spec(Architecture::Qwen35, "tiny");
    match &dense.layers[0].ffn {
        FeedForward::Dense(d) => {
            assert_eq!((d.d_ff, d.norm_name), (768, "post_attention_norm"));
            assert_eq!(d.activation, Activation::Silu);
        }
        other => panic!("{other:?}"),
    }
    let moe = spec(Architecture::Qwen35Moe, "tiny");
    for l in &moe.layers {
        let FeedForward::Moe(m) = &l.ffn else {
            panic!("{:?}", l.ffn)
        };
        assert_eq!((m.n_expert, m.n_used, m.d_ff_expert), (16, 4, 256));
        assert_eq!(m.gating, ExpertGating::Softmax);
        assert!(m.norm_weights);
        assert_eq!(m.weights_scale, 0.0);
        assert_eq!(m.norm_name, "post_attention_norm");
        assert_eq!(m.shared, Some(SharedExpert { d_ff: 256 }));
        assert!(m.dense_beside.is_none() && !m.expert_out_scale);
    }
}

/// The real shapes: 30 DeltaNet + 10 attention layers, ~62.8 MiB of state
/// per sequence for 35B-A3B; 48 + 16 and ~149.6 MiB for 27B (the plan's
/// table, from llama.cpp's `n_embd_r` / `n_embd_s`).
#[test]
fn qwen35_real_presets_state_per_sequence() {
    let moe = spec(Architecture::Qwen35Moe, "35b-a3b");
    assert_eq!(moe.n_layers, 40);
    assert_eq!(recurrent_layers(&moe).len(), 30);
    assert!((0..40).all(|il| moe.attention(il).is_some() == (il % 4 == 3)));
    assert_eq!(
        moe.recurrent_state_bytes_per_seq(),
        30 * 4 * (3 * 8192 + 128 * 4096)
    );
    let mib = moe.recurrent_state_bytes_per_seq() as f64 / (1u64 << 20) as f64;
    assert!((mib - 62.8).abs() < 0.05, "{mib}");
    let dense = spec(Architecture::Qwen35, "27b");
    assert_eq!(recurrent_layers(&dense).len(), 48);
    assert_eq!(
        dense.recurrent_state_bytes_per_seq(),
        48 * 4 * (3 * 10240 + 128 * 6144)
    );
    let a = dense.attention(3).unwrap();
    assert_eq!(
        (a.n_heads, a.n_kv_heads, a.head_dim, a.rope.dims),
        (24, 4, 256, 64)
    );
}

#[test]
fn qwen35_recurrent_layers_key_overrides_the_interval() {
    let mut w = writer(Architecture::Qwen35, "tiny");
    let flags = [false, true, true, false];
    w.add_metadata(
        "qwen35.attention.recurrent_layers",
        MetaValue::Array(flags.iter().map(|&b| MetaValue::Bool(b)).collect()),
    );
    assert_eq!(recurrent_layers(&spec_of(&w).unwrap()), [1, 2]);
    w.add_metadata(
        "qwen35.attention.recurrent_layers",
        MetaValue::Array(vec![MetaValue::Bool(true)]),
    );
    assert!(spec_of(&w).is_err(), "an array shorter than block_count");
}

#[test]
fn qwen35_mtp_layers_are_not_in_the_trunk() {
    let mut w = writer(Architecture::Qwen35, "tiny");
    w.add_metadata("qwen35.block_count", MetaValue::U32(5));
    w.add_metadata("qwen35.nextn_predict_layers", MetaValue::U32(1));
    let s = spec_of(&w).unwrap();
    assert_eq!((s.n_layers, s.layers.len()), (4, 4));
    assert_eq!(recurrent_layers(&s), [0, 1, 2]);
    w.add_metadata("qwen35.nextn_predict_layers", MetaValue::U32(5));
    assert!(spec_of(&w).is_err());
}

#[test]
fn qwen35_refuses_what_it_cannot_run_or_size() {
    let refused = |key: &str, v: MetaValue, needle: &str| {
        let mut w = writer(Architecture::Qwen35Moe, "tiny");
        w.add_metadata(format!("qwen35moe.{key}"), v);
        let e = spec_of(&w).expect_err(key).to_string();
        assert!(e.contains(needle), "{key}: {e}");
    };
    let ints = |v: &[i32]| MetaValue::Array(v.iter().map(|&x| MetaValue::I32(x)).collect());
    // Pairs 6 and 7 of 8 fall past 3 × the sections: position 0 (IMRoPE's
    // fourth section), not NeoX.
    refused(
        "rope.dimension_sections",
        ints(&[2, 2, 2, 2]),
        "no text position",
    );
    refused(
        "rope.dimension_sections",
        ints(&[3, 3, 2]),
        "rope.dimension_sections",
    );
    refused("ssm.inner_size", MetaValue::U32(500), "ssm.inner_size");
    refused("ssm.group_count", MetaValue::U32(3), "value heads");
    refused(
        "full_attention_interval",
        MetaValue::U32(0),
        "full_attention_interval",
    );
    refused("ssm.state_size", MetaValue::U64(1 << 40), "ssm.state_size");
}

#[test]
fn gemma4_tiny_sliding_and_global_layers() {
    let s = spec(Architecture::Gemma4, "tiny");
    assert_eq!(s.n_layers, 6);
    for il in 0..6 {
        let a = s.attention(il).unwrap();
        assert!(a.qk_norm && a.v_norm && !a.output_gate, "{il}");
        assert_eq!((a.scale, a.scale_query), (1.0, false));
        assert_eq!(a.n_heads, 4);
        assert_eq!(a.rope.style, RopeStyle::Neox);
        if il < 5 {
            assert_eq!((a.head_dim, a.n_kv_heads, a.window), (64, 2, Some(16)));
            assert_eq!((a.rope.dims, a.rope.freq_base), (64, 10_000.0));
            assert!(!a.rope.freq_factors && !a.v_from_k);
        } else {
            assert_eq!((a.head_dim, a.n_kv_heads, a.window), (128, 1, None));
            assert_eq!((a.rope.dims, a.rope.freq_base), (128, 1e6));
            assert!(a.rope.freq_factors && a.v_from_k);
        }
        let l = &s.layers[il];
        assert!(l.post_norms && l.layer_scale);
        match &l.ffn {
            FeedForward::Dense(d) => {
                assert_eq!((d.d_ff, d.activation), (768, Activation::GeluTanh));
                assert_eq!(d.norm_name, "ffn_norm");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(s.final_softcap, Some(30.0));
    assert_eq!(s.embedding_scale, Some(16.0));
    assert!(!s.out_rows_after_attention);
    assert_eq!(s.recurrent_state_bytes_per_seq(), 0);
}

#[test]
fn gemma4_moe_layers_run_experts_beside_the_mlp() {
    let s = spec(Architecture::Gemma4, "tiny-moe");
    for l in &s.layers {
        let FeedForward::Moe(m) = &l.ffn else {
            panic!("{:?}", l.ffn)
        };
        assert_eq!((m.n_expert, m.n_used, m.d_ff_expert), (16, 4, 256));
        assert_eq!(m.activation, Activation::GeluTanh);
        assert_eq!(m.gating, ExpertGating::Softmax);
        assert!(m.norm_weights && m.expert_out_scale && m.shared.is_none());
        assert_eq!(m.norm_name, "pre_ffw_norm_2");
        assert_eq!(m.dense_beside.as_ref().map(|d| d.d_ff), Some(768));
    }
}

#[test]
fn gemma4_real_presets() {
    let s = spec(Architecture::Gemma4, "31b");
    assert_eq!(s.n_layers, 60);
    let global: Vec<usize> = (0..60)
        .filter(|&il| s.attention(il).unwrap().window.is_none())
        .collect();
    assert_eq!(global, (0..10).map(|k| 6 * k + 5).collect::<Vec<_>>());
    let (swa, full) = (s.attention(0).unwrap(), s.attention(5).unwrap());
    assert_eq!((swa.n_heads, swa.n_kv_heads, swa.head_dim), (32, 16, 256));
    assert_eq!((full.n_heads, full.n_kv_heads, full.head_dim), (32, 4, 512));
    assert_eq!(swa.window, Some(1024));
    let moe = spec(Architecture::Gemma4, "26b-a4b");
    assert!(moe.is_moe());
    assert_eq!(moe.attention(0).unwrap().n_kv_heads, 8);
}

#[test]
fn gemma4_e_series_per_layer_inputs_and_shared_kv() {
    let s = spec(Architecture::Gemma4, "tiny-e");
    assert_eq!((s.n_layers, s.per_layer_input), (8, Some(64)));
    let sources: Vec<Option<usize>> = (0..8)
        .map(|il| s.attention(il).unwrap().kv_source)
        .collect();
    // Global layers 3 and 7; layers 4-7 read layer 2 (sliding) or 3 (global).
    assert_eq!(
        sources,
        [None, None, None, None, Some(2), Some(2), Some(2), Some(3)]
    );
    let cuts: Vec<usize> = (1..8).filter(|&c| s.cut_allowed(c)).collect();
    assert_eq!(cuts, [1, 2]);
    assert!((0..8).all(|il| s.owns_kv(il) == (il < 4)));
    // Real shapes: llama.cpp's rule on 35 and 42 layers.
    for (preset, owning) in [("e2b", 15), ("e4b", 24)] {
        let s = spec(Architecture::Gemma4, preset);
        assert_eq!(s.per_layer_input, Some(256));
        for il in owning..s.n_layers {
            let a = s.attention(il).unwrap();
            let want = if a.window.is_some() {
                owning - 2
            } else {
                owning - 1
            };
            assert_eq!(a.kv_source, Some(want), "{preset} layer {il}");
        }
        assert!(s.cut_allowed(owning - 2) && !s.cut_allowed(owning - 1));
    }
}

#[test]
fn gemma4_refuses_bad_shared_kv_and_unequal_heads() {
    let refused = |key: &str, v: MetaValue, needle: &str| {
        let mut w = writer(Architecture::Gemma4, "tiny");
        w.add_metadata(format!("gemma4.{key}"), v);
        let e = spec_of(&w).expect_err(key).to_string();
        assert!(e.contains(needle), "{key}: {e}");
    };
    // tiny's layers 0-4 slide and 5 is global: with 2 shared layers, layer 4
    // (sliding) would read layer 2 and layer 5 (global) layer 3, a sliding one.
    refused(
        "attention.shared_kv_layers",
        MetaValue::U32(2),
        "global layer 5 would read the KV of sliding layer 3",
    );
    refused(
        "attention.shared_kv_layers",
        MetaValue::U32(5),
        "fewer than 2",
    );
    refused(
        "embedding_length_per_layer_input",
        MetaValue::U32(1 << 20),
        "embedding_length_per_layer_input",
    );
    refused("attention.value_length_swa", MetaValue::U32(32), "differs");
    refused(
        "attention.head_count_kv",
        MetaValue::Array(vec![MetaValue::U32(2); 3]),
        "entries",
    );
    let mut w = writer(Architecture::Gemma4, "tiny");
    w.add_metadata("gemma4.attention.sliding_window_pattern", MetaValue::U32(6));
    assert!(spec_of(&w).is_err(), "the pattern must be a bool array");
}
