//! Profiles of small synthetic models against bytes computed by hand from
//! their tensor sizes.

use super::*;
use crate::arch::Architecture;
use crate::gguf::{GgufWriter, MetaValue};
use crate::quant::GgmlType;
use crate::slice::LayerRange;
use crate::synth::{QuantScheme, SynthSpec};

/// The file `w` would write, without its data.
fn file_of(w: &GgufWriter) -> GgufFile {
    w.layout("<test>").expect("layout")
}

fn tiny(arch: Architecture) -> GgufWriter {
    SynthSpec::from_preset(arch, "tiny", QuantScheme::Uniform(GgmlType::Q8_0))
        .expect("preset")
        .writer()
        .expect("writer")
}

fn profile_of(f: &GgufFile) -> MemoryProfile {
    let hp = crate::arch::ModelSpec::from_gguf(f).expect("model spec");
    MemoryProfile::from_gguf(f, &hp)
}

/// Q8_0: 34 bytes per 32 values.
const fn q8(n: u64) -> u64 {
    n / 32 * 34
}

/// One layer of tiny llama (d 256, q 256, kv 128, ff 768) in Q8_0, by hand.
const TINY_LLAMA_LAYER: u64 = 256 * 4 // attn_norm f32
    + q8(256 * 256) // attn_q
    + 2 * q8(256 * 128) // attn_k, attn_v
    + q8(256 * 256) // attn_output
    + 256 * 4 // ffn_norm f32
    + 3 * q8(256 * 768); // ffn_gate, ffn_up, ffn_down

/// Expert tensors of the hand-made MoE layer: 8 experts of width 128.
const EXPERTS: u64 = 8;
const EXPERT_TENSOR: u64 = q8(256 * 128 * EXPERTS);
const ROUTER: u64 = 256 * EXPERTS * 4;

/// Tiny llama with a router and 8 experts (2 used) added to every layer.
fn tiny_moe() -> GgufFile {
    let mut w = tiny(Architecture::Llama);
    w.add_metadata("llama.expert_count", MetaValue::U32(EXPERTS as u32));
    w.add_metadata("llama.expert_used_count", MetaValue::U32(2));
    for il in 0..4 {
        let t = |w: &mut GgufWriter, name: &str, dims: &[u64], ty| {
            w.add_tensor(format!("blk.{il}.{name}"), dims, ty)
                .expect("tensor");
        };
        t(
            &mut w,
            "ffn_gate_inp.weight",
            &[256, EXPERTS],
            GgmlType::F32,
        );
        t(
            &mut w,
            "ffn_gate_exps.weight",
            &[256, 128, EXPERTS],
            GgmlType::Q8_0,
        );
        t(
            &mut w,
            "ffn_up_exps.weight",
            &[256, 128, EXPERTS],
            GgmlType::Q8_0,
        );
        t(
            &mut w,
            "ffn_down_exps.weight",
            &[128, 256, EXPERTS],
            GgmlType::Q8_0,
        );
    }
    file_of(&w)
}

#[test]
fn dense_layers_are_their_tensors_and_read_in_full() {
    let p = profile_of(&file_of(&tiny(Architecture::Llama)));
    assert_eq!(p.layers.len(), 4);
    for l in &p.layers {
        assert_eq!(l.weight_bytes, TINY_LLAMA_LAYER);
        assert_eq!(l.expert_bytes, 0);
        assert_eq!(l.active_bytes_per_token, TINY_LLAMA_LAYER);
        // 2 KV heads x 64 dims for K and for V, f16.
        assert_eq!(l.kv_bytes_per_token(KvType::F16), 2 * 256);
        assert_eq!(l.kv_bytes_per_token(KvType::Q8_0), 2 * q8(128));
    }
    assert_eq!((p.expert_count, p.expert_used_count), (0, 0));
    assert!(!p.is_moe());
    assert_eq!(p.embedding_bytes, q8(256 * 2048));
    // output_norm + output.weight (tiny llama is untied).
    assert_eq!(p.head_bytes, 256 * 4 + q8(256 * 2048));
    assert_eq!(
        p.active_bytes_per_token(),
        4 * TINY_LLAMA_LAYER + p.head_bytes
    );
}

#[test]
fn moe_layers_count_experts_apart_and_a_token_reads_the_used_ones() {
    let p = profile_of(&tiny_moe());
    assert_eq!((p.expert_count, p.expert_used_count), (8, 2));
    assert!(p.is_moe());
    for l in &p.layers {
        assert_eq!(l.expert_bytes, 3 * EXPERT_TENSOR);
        assert_eq!(
            l.weight_bytes,
            TINY_LLAMA_LAYER + ROUTER + 3 * EXPERT_TENSOR
        );
        assert_eq!(l.dense_bytes(), TINY_LLAMA_LAYER + ROUTER);
        assert_eq!(
            l.active_bytes_per_token,
            TINY_LLAMA_LAYER + ROUTER + 3 * EXPERT_TENSOR * 2 / 8
        );
    }
    assert_eq!(p.total_expert_bytes(), 4 * 3 * EXPERT_TENSOR);
    assert_eq!(
        p.active_bytes_per_token(),
        4 * (TINY_LLAMA_LAYER + ROUTER + 3 * EXPERT_TENSOR / 4) + p.head_bytes
    );
}

#[test]
fn expert_count_falls_back_to_the_tensors_and_used_to_all() {
    let mut w = GgufWriter::new();
    for (k, v) in tiny(Architecture::Llama).metadata() {
        w.add_metadata(k.clone(), v.clone());
    }
    let mut f = file_of(&w);
    f.tensors = tiny_moe().tensors;
    let p = profile_of(&f);
    assert_eq!((p.expert_count, p.expert_used_count), (8, 8));
    assert!(p
        .layers
        .iter()
        .all(|l| l.active_bytes_per_token == l.weight_bytes));
}

#[test]
fn stage_memory_is_weights_whole_kv_blocks_and_scratch() {
    let p = profile_of(&file_of(&tiny(Architecture::Llama)));
    // 100 positions are 4 blocks of 32 = 128 tokens; a batch of 64.
    let load = StageLoad {
        kv_tokens: 100,
        kv_type: KvType::F16,
        batch_tokens: 64,
        sequences: 3,
    };
    assert_eq!((load.kv_blocks(), load.kv_tokens_allocated()), (4, 128));
    let scratch_per_token = 4 * (3 * 256 + 256 + 128 + 128 + 2 * 768);
    assert_eq!(p.scratch_bytes_per_token, scratch_per_token);

    let first = p.stage_memory(LayerRange { first: 0, end: 2 }, &load);
    assert_eq!(first.weight_bytes, 2 * TINY_LLAMA_LAYER + p.embedding_bytes);
    assert_eq!(first.expert_bytes, 0);
    assert_eq!(first.kv_bytes, 2 * 512 * 128);
    assert_eq!(first.state_bytes, 0, "attention layers hold no state");
    assert_eq!(first.scratch_bytes, scratch_per_token * 64);
    assert_eq!(
        first.total_bytes,
        first.weight_bytes + first.kv_bytes + first.scratch_bytes
    );

    let last = p.stage_memory(LayerRange { first: 2, end: 4 }, &load);
    assert_eq!(last.weight_bytes, 2 * TINY_LLAMA_LAYER + p.head_bytes);
    assert_eq!(last.kv_bytes, 2 * 512 * 128);
    // + one f32 row of logits per sequence.
    assert_eq!(last.scratch_bytes, scratch_per_token * 64 + 3 * 4 * 2048);

    // A batch larger than the pool counts only the pool's positions.
    let small = StageLoad {
        kv_tokens: 10,
        batch_tokens: 512,
        ..load
    };
    let m = p.stage_memory(LayerRange { first: 1, end: 2 }, &small);
    assert_eq!(m.kv_bytes, 512 * 32);
    assert_eq!(m.scratch_bytes, scratch_per_token * 32);
    // Ranges past the model are clamped, not a panic.
    assert_eq!(
        p.stage_memory(LayerRange { first: 3, end: 99 }, &load),
        p.stage_memory(LayerRange { first: 3, end: 4 }, &load)
    );
}

#[test]
fn stage_memory_holds_the_experts_a_token_does_not_read() {
    let p = profile_of(&tiny_moe());
    let load = StageLoad::for_sequences(4096, 1, KvType::F16, 512);
    let m = p.stage_memory(LayerRange { first: 1, end: 3 }, &load);
    assert_eq!(m.expert_bytes, 2 * 3 * EXPERT_TENSOR);
    assert_eq!(
        m.weight_bytes,
        2 * (TINY_LLAMA_LAYER + ROUTER + 3 * EXPERT_TENSOR)
    );
}

#[test]
fn sliding_layers_are_held_as_rings_when_the_batch_is_bounded() {
    // gemma3 tiny: window 512, every 6th layer global.
    let p = profile_of(&file_of(&tiny(Architecture::Gemma3)));
    assert!(p.layers.iter().any(|l| l.kv_window_tokens == Some(512)));
    let load = StageLoad::for_sequences(4096, 2, KvType::F16, 512);
    assert_eq!(load.kv_tokens, 8192);
    let all = LayerRange {
        first: 0,
        end: p.layers.len(),
    };
    let per_token = |window: bool| -> u64 {
        p.layers
            .iter()
            .filter(|l| l.kv_window_tokens.is_some() == window)
            .map(|l| l.kv_bytes_per_token(KvType::F16))
            .sum()
    };
    // A ring per sequence: 512 back + a 512-token batch - 1 = 1023
    // positions, 32 blocks, and a second as the prefix cache's snapshot;
    // the global layers the full 8192.
    assert_eq!(window_ring_blocks(512, 512), 32);
    assert_eq!(load.window_blocks(512), Some(2 * 2 * 32));
    assert_eq!(
        p.stage_memory(all, &load).kv_bytes,
        per_token(false) * 8192 + per_token(true) * 2 * 2 * 32 * 32
    );
    // With no batch bound (Stage::load), sliding layers get the full pool.
    let unbounded = StageLoad {
        batch_tokens: 0,
        ..load
    };
    assert_eq!(
        p.stage_memory(all, &unbounded).kv_bytes,
        (per_token(false) + per_token(true)) * 8192
    );
    // Rings never exceed the full pool.
    let short = StageLoad::for_sequences(256, 2, KvType::F16, 512);
    assert_eq!(short.window_blocks(512), Some(short.kv_blocks()));
    // What a token reads is capped at the window.
    let l = &p.layers[0];
    assert_eq!(l.kv_window_tokens, Some(512));
    assert_eq!(
        l.kv_read_bytes(KvType::F16, 4096),
        l.kv_bytes_per_token(KvType::F16) * 512
    );
}

#[test]
fn for_sequences_rounds_each_sequence_to_whole_blocks() {
    let load = StageLoad::for_sequences(100, 3, KvType::Q8_0, 512);
    assert_eq!(load.kv_tokens, 3 * 128);
    assert_eq!(load.kv_blocks(), 12);
    let huge = StageLoad::for_sequences(usize::MAX, usize::MAX, KvType::F16, 1);
    assert_eq!(huge.kv_tokens, usize::MAX);
}

#[test]
fn synth_qwen3moe_tiny_by_hand() {
    // 4 layers, d 256, 16 experts of width 256, 2 used; Q8_0 everywhere
    // but the f32 norms and router.
    let f = file_of(&tiny(Architecture::Qwen3Moe));
    let p = profile_of(&f);
    assert_eq!((p.expert_count, p.expert_used_count), (16, 2));
    let experts = 3 * q8(256 * 256 * 16);
    let dense: u64 = f
        .tensors
        .iter()
        .filter(|t| t.name.starts_with("blk.0.") && !t.name.contains("_exps."))
        .map(|t| t.size_bytes)
        .sum();
    // attention (q 4x128, kv 2x128), Q/K norms, two norms, the router.
    assert_eq!(
        dense,
        q8(256 * 512)
            + 2 * q8(256 * 256)
            + q8(512 * 256)
            + 2 * 128 * 4
            + 2 * 256 * 4
            + 256 * 16 * 4
    );
    for l in &p.layers {
        assert_eq!(l.expert_bytes, experts);
        assert_eq!(l.weight_bytes, dense + experts);
        assert_eq!(l.active_bytes_per_token, dense + experts / 8);
    }
    let load = StageLoad::for_sequences(512, 1, KvType::F16, 64);
    let all = p.stage_memory(LayerRange { first: 0, end: 4 }, &load);
    assert_eq!(all.expert_bytes, 4 * experts);
    assert_eq!(
        all.weight_bytes,
        p.total_weight_bytes(),
        "one stage holds every weight"
    );
}

/// llama.cpp's state sizes per sequence and DeltaNet layer
/// (`llama_hparams::n_embd_r`, `n_embd_s`, both kept in f32): the conv state
/// `(d_conv - 1) * (d_inner + 2 * n_group * d_state)` and the SSM state
/// `d_state * d_inner` (= d_state^2 per value head).
fn llama_cpp_state_bytes(d_conv: u64, d_inner: u64, d_state: u64, n_group: u64) -> u64 {
    let conv = (d_conv - 1) * (d_inner + 2 * n_group * d_state);
    let ssm = d_state * d_inner;
    4 * (conv + ssm)
}

/// A field of llama.cpp's `print_info` in a recorded reference.
fn print_info(reference: &serde_json::Value, key: &str) -> u64 {
    reference["llama_cpp"]["print_info"][key]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("print_info.{key}"))
}

#[test]
fn qwen35_tiny_deltanet_layers_hold_llama_cpps_state_and_no_kv() {
    // The shapes as llama.cpp read them from this very file (the reference's
    // gguf_sha256 is checked against the writer in synth/tests.rs).
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/data/synth-qwen35-q8_0.json"
    );
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("reference")).expect("json");
    let info = |k| print_info(&reference, k);
    assert_eq!(info("n_layer"), 4);
    let per_layer = llama_cpp_state_bytes(
        info("ssm_d_conv"),
        info("ssm_d_inner"),
        info("ssm_d_state"),
        info("ssm_n_group"),
    );
    // 4 * (3 * 1024 + 128 * 512).
    assert_eq!(per_layer, 274_432);
    // K and V rows of the attention layer, f16.
    let kv_f16 = 2 * (info("n_embd_k_gqa") + info("n_embd_v_gqa"));

    let p = profile_of(&file_of(&tiny(Architecture::Qwen35)));
    let rows = STATE_COPIES_PER_SEQ as u64;
    // full_attention_interval 4: layers 0-2 DeltaNet, layer 3 attention.
    for (il, l) in p.layers.iter().enumerate() {
        let recurrent = il != 3;
        assert_eq!(
            l.state_bytes_per_seq,
            if recurrent { rows * per_layer } else { 0 }
        );
        assert_eq!(
            l.kv_bytes_per_token(KvType::F16),
            if recurrent { 0 } else { kv_f16 }
        );
    }
    // 823296 bytes: the 0.79 MiB of recurrent state llama.cpp allots one
    // sequence of this file, once live and once as the prefix cache's
    // snapshot.
    assert_eq!(p.state_bytes_per_seq(), rows * 3 * per_layer);
    assert_eq!(p.state_bytes_per_seq(), rows * 823_296);

    let all = LayerRange { first: 0, end: 4 };
    let at = |ctx, seqs| p.stage_memory(all, &StageLoad::for_sequences(ctx, seqs, KvType::F16, 64));
    for seqs in [1, 3] {
        let short = at(256, seqs);
        let long = at(4096, seqs);
        // State scales with sequences and not with context; KV is the one
        // attention layer's only.
        assert_eq!(short.state_bytes, seqs as u64 * rows * 3 * per_layer);
        assert_eq!(long.state_bytes, short.state_bytes);
        assert_eq!(long.kv_bytes, kv_f16 * 4096 * seqs as u64);
        assert_eq!(
            long.total_bytes,
            long.weight_bytes + long.kv_bytes + long.state_bytes + long.scratch_bytes
        );
    }
    // A stage of the attention layer alone holds no state; one of a
    // DeltaNet layer alone no KV.
    let load = StageLoad::for_sequences(512, 2, KvType::F16, 64);
    let attention = p.stage_memory(LayerRange { first: 3, end: 4 }, &load);
    assert_eq!(
        (attention.state_bytes, attention.kv_bytes),
        (0, kv_f16 * 1024)
    );
    let recurrent = p.stage_memory(LayerRange { first: 1, end: 2 }, &load);
    assert_eq!(
        (recurrent.state_bytes, recurrent.kv_bytes),
        (2 * rows * per_layer, 0)
    );
}

#[test]
fn qwen35_real_shapes_hold_the_plan_docs_state_per_sequence() {
    // docs/plans/qwen35-gemma4.md §1.5 from llama.cpp's formulas: 27B has 48
    // DeltaNet layers of 64 (d_inner 6144, 16 key groups), 35B-A3B 30 of 40
    // (d_inner 4096, 16 key groups); d_conv 4, d_state 128.
    for (arch, preset, deltanet_layers, d_inner, mib) in [
        (Architecture::Qwen35, "27b", 48, 6144, 149.6),
        (Architecture::Qwen35Moe, "35b-a3b", 30, 4096, 62.8),
    ] {
        let w = SynthSpec::from_preset(arch, preset, QuantScheme::Uniform(GgmlType::Q8_0))
            .expect("preset")
            .writer()
            .expect("writer");
        let p = profile_of(&file_of(&w));
        let want = deltanet_layers * llama_cpp_state_bytes(4, d_inner, 128, 16);
        assert_eq!(
            p.state_bytes_per_seq(),
            want * STATE_COPIES_PER_SEQ as u64,
            "{arch} {preset}"
        );
        let got_mib = want as f64 / (1 << 20) as f64;
        assert!(
            (got_mib - mib).abs() < 0.05,
            "{arch} {preset}: {got_mib} MiB"
        );
        let stateful = p.layers.iter().filter(|l| l.state_bytes_per_seq > 0);
        assert!(stateful
            .clone()
            .all(|l| l.kv_bytes_per_token(KvType::Q8_0) == 0));
        assert_eq!(stateful.count() as u64, deltanet_layers);
    }
}

#[test]
fn attention_only_models_hold_no_state() {
    for arch in [
        Architecture::Llama,
        Architecture::Gemma3,
        Architecture::Qwen3Moe,
    ] {
        let p = profile_of(&file_of(&tiny(arch)));
        assert_eq!(p.state_bytes_per_seq(), 0, "{arch}");
        let load = StageLoad::for_sequences(512, 4, KvType::F16, 64);
        let all = LayerRange {
            first: 0,
            end: p.layers.len(),
        };
        assert_eq!(p.stage_memory(all, &load).state_bytes, 0, "{arch}");
    }
}
