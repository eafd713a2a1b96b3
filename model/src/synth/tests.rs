use sha2::{Digest, Sha256};

use super::*;
use crate::gguf::GgufFile;
use crate::quant::dequantize_row;

fn spec(arch: Architecture, preset: &str, quant: &str, seed: u64) -> SynthSpec {
    let mut s = SynthSpec::from_preset(arch, preset, QuantScheme::parse(quant).unwrap()).unwrap();
    s.seed = seed;
    s
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Files tests and benchmarks elsewhere rely on: `strata synth --arch A
/// --quant Q --seed 3` as written before the mixture-of-experts
/// architectures came.
#[test]
fn older_architectures_files_are_unchanged() {
    let want = [
        (
            Architecture::Llama,
            "Q8_0",
            "8ead1bd071e670f496082d5c5e52872133f5e492e72be8ea0b88bf3099e8e1e5",
        ),
        (
            Architecture::Llama,
            "Q4_K_M",
            "ac9e96d31f726a5084b0308f9a79fc6f6f53bff91bf880403e54198d07424440",
        ),
        (
            Architecture::Qwen2,
            "Q8_0",
            "99790ba58fa3185494fb3a84da1d6ba412d448803feede57da53e65fa9b9aecb",
        ),
        (
            Architecture::Qwen3,
            "Q4_K_M",
            "c5efad6c5d1c24fb56a05383881b726e4b4981d1f50d49df85bea991ef125cd7",
        ),
        (
            Architecture::Gemma3,
            "Q8_0",
            "37ea028202276bebab0a9eff6fff9ab89d1a209e7ea04c41d7f3bec561d1d83c",
        ),
    ];
    for (arch, quant, sha) in want {
        let bytes = spec(arch, "tiny", quant, 3).to_bytes().unwrap();
        assert_eq!(sha256_hex(&bytes), sha, "{arch} tiny {quant}");
    }
}

#[test]
fn every_preset_has_a_writer() {
    for arch in Architecture::ALL {
        assert!(!presets(arch).is_empty(), "{arch}");
        for name in presets(arch) {
            let s = spec(arch, name, "Q4_K_M", 0);
            let w = s.writer().unwrap();
            let experts = w
                .tensors()
                .iter()
                .filter(|t| t.name.contains("_exps.weight"));
            // MTP blocks have the trunk's feed-forward.
            let mtp = s.shape.delta_net.map_or(0, |dn| dn.mtp_layers);
            assert_eq!(
                experts.count(),
                if s.shape.experts.is_some() {
                    3 * (s.shape.n_layers + mtp)
                } else {
                    0
                },
                "{arch} {name}"
            );
        }
    }
}

fn meta_u64(f: &GgufFile, key: &str) -> u64 {
    f.get_u64(key).unwrap_or_else(|| panic!("no {key}"))
}

#[test]
fn moe_metadata_and_tensors_are_llama_cpps() {
    let bytes = spec(Architecture::Qwen3Moe, "tiny", "Q4_K_M", 0)
        .to_bytes()
        .unwrap();
    let f = GgufFile::from_bytes("qwen3moe", &bytes).unwrap();
    assert_eq!(meta_u64(&f, "qwen3moe.expert_count"), 16);
    assert_eq!(meta_u64(&f, "qwen3moe.expert_used_count"), 2);
    assert_eq!(meta_u64(&f, "qwen3moe.expert_feed_forward_length"), 256);
    let t = f.tensor("blk.3.ffn_down_exps.weight").unwrap();
    assert_eq!(t.dims, vec![256, 256, 16]);
    assert_eq!(
        t.dtype,
        GgmlType::Q6K,
        "ffn_down_exps follows ffn_down's Q4_K_M rule"
    );
    assert_eq!(
        f.tensor("blk.0.ffn_gate_inp.weight").unwrap().dtype,
        GgmlType::F32
    );

    let bytes = spec(Architecture::GptOss, "20b", "Q8_0", 0)
        .writer()
        .unwrap();
    let names: Vec<&str> = bytes.tensors().iter().map(|t| t.name.as_str()).collect();
    for name in [
        "blk.0.attn_sinks.weight",
        "blk.0.attn_q.bias",
        "blk.0.attn_output.bias",
        "blk.0.post_attention_norm.weight",
        "blk.0.ffn_gate_inp.bias",
        "blk.0.ffn_gate_exps.bias",
        "blk.0.ffn_up_exps.bias",
        "blk.0.ffn_down_exps.bias",
        "output.weight",
    ] {
        assert!(names.contains(&name), "gpt-oss has {name}");
    }
    let gate = bytes
        .tensors()
        .iter()
        .find(|t| t.name == "blk.23.ffn_gate_exps.weight")
        .unwrap();
    assert_eq!(gate.dims, vec![2880, 2880, 32]);
}

#[test]
fn mxfp4_puts_experts_in_mxfp4_and_the_rest_in_q8_0() {
    let q = QuantScheme::parse("MXFP4").unwrap();
    let w = SynthSpec {
        quant: q,
        ..spec(Architecture::GptOss, "tiny", "Q8_0", 0)
    }
    .writer()
    .unwrap();
    for t in w.tensors() {
        let want = if t.name.contains("_exps.weight") {
            "MXFP4"
        } else if t.dims.len() == 1 || t.name.contains("ffn_gate_inp") || t.name.ends_with(".bias")
        {
            "F32"
        } else {
            "Q8_0"
        };
        assert_eq!(t.dtype.name(), want, "{}", t.name);
    }
}

/// Layer 0's router on the token embeddings (RMS-normed): the experts each
/// byte token goes to.
fn layer0_routes(arch: Architecture) -> Vec<Vec<usize>> {
    let s = spec(arch, "tiny", "Q8_0", 0);
    let e = s.shape.experts.unwrap();
    let d = s.shape.d_model;
    let bytes = s.to_bytes().unwrap();
    let f = GgufFile::from_bytes("moe", &bytes).unwrap();
    let rows = |name: &str, n_rows: usize, row_len: usize| -> Vec<f32> {
        let t = f.tensor(name).unwrap();
        let mut out = vec![0f32; n_rows * row_len];
        let row_bytes = t.dtype.row_bytes(row_len as u64).unwrap() as usize;
        let data = f.tensor_data(t);
        for (r, y) in out.chunks_exact_mut(row_len).enumerate() {
            dequantize_row(t.dtype, &data[r * row_bytes..(r + 1) * row_bytes], y).unwrap();
        }
        out
    };
    let embd = rows("token_embd.weight", 256, d);
    let router = rows("blk.0.ffn_gate_inp.weight", e.count, d);
    let bias = f
        .tensor("blk.0.ffn_gate_inp.bias")
        .map(|_| rows("blk.0.ffn_gate_inp.bias", 1, e.count))
        .unwrap_or_else(|| vec![0.0; e.count]);
    embd.chunks_exact(d)
        .map(|x| {
            let rms = (x.iter().map(|v| v * v).sum::<f32>() / d as f32 + 1e-6).sqrt();
            let logits: Vec<f32> = router
                .chunks_exact(d)
                .zip(&bias)
                .map(|(w, b)| w.iter().zip(x).map(|(w, x)| w * x / rms).sum::<f32>() + b)
                .collect();
            let mut order: Vec<usize> = (0..e.count).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            let mut top = order[..e.used].to_vec();
            top.sort_unstable();
            top
        })
        .collect()
}

#[test]
fn routers_send_tokens_to_different_experts() {
    for arch in [Architecture::Qwen3Moe, Architecture::GptOss] {
        let routes = layer0_routes(arch);
        let n_experts = SynthSpec::from_preset(arch, "tiny", QuantScheme::Q4KM)
            .unwrap()
            .shape
            .experts
            .unwrap()
            .count;
        let mut hits = vec![0usize; n_experts];
        for r in &routes {
            for &x in r {
                hits[x] += 1;
            }
        }
        let mut sets = routes.clone();
        sets.sort();
        sets.dedup();
        eprintln!(
            "{arch}: {} expert sets over 256 tokens, hits {hits:?}",
            sets.len()
        );
        assert!(
            hits.iter().all(|&h| h > 0),
            "{arch}: every expert gets tokens: {hits:?}"
        );
        assert!(
            sets.len() >= n_experts,
            "{arch}: only {} expert sets",
            sets.len()
        );
    }
}

fn tensor_dims(w: &GgufWriter, name: &str) -> (Vec<u64>, GgmlType) {
    let t = w
        .tensors()
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no tensor {name}"));
    (t.dims.clone(), t.dtype)
}

/// An F32 tensor's values.
fn f32_tensor(f: &GgufFile, name: &str) -> Vec<f32> {
    let info = f.tensor(name).unwrap_or_else(|| panic!("no tensor {name}"));
    assert_eq!(info.dtype, GgmlType::F32, "{name}");
    f.tensor_data(info)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn has_tensor(w: &GgufWriter, name: &str) -> bool {
    w.tensors().iter().any(|t| t.name == name)
}

/// `llama_model_qwen35moe::load_arch_tensors`' shapes for the tiny preset
/// (d 256; S 128, 2 key heads, 4 value heads: key_dim 256, value_dim 512,
/// conv_dim 1024; 4 heads / 2 KV heads of 64).
#[test]
fn qwen35_tensors_are_llama_cpps() {
    let w = spec(Architecture::Qwen35Moe, "tiny", "Q8_0", 0)
        .writer()
        .unwrap();
    let f32 = GgmlType::F32;
    let q8 = GgmlType::Q8_0;
    let want: [(&str, &[u64], GgmlType); 22] = [
        ("blk.0.attn_norm.weight", &[256], f32),
        ("blk.0.post_attention_norm.weight", &[256], f32),
        ("blk.0.attn_qkv.weight", &[256, 1024], q8),
        ("blk.0.attn_gate.weight", &[256, 512], q8),
        ("blk.0.ssm_conv1d.weight", &[4, 1024], f32),
        ("blk.0.ssm_dt.bias", &[4], f32),
        ("blk.0.ssm_a", &[4], f32),
        ("blk.0.ssm_beta.weight", &[256, 4], q8),
        ("blk.0.ssm_alpha.weight", &[256, 4], q8),
        ("blk.0.ssm_norm.weight", &[128], f32),
        ("blk.0.ssm_out.weight", &[512, 256], q8),
        ("blk.3.attn_q.weight", &[256, 2 * 4 * 64], q8),
        ("blk.3.attn_k.weight", &[256, 128], q8),
        ("blk.3.attn_v.weight", &[256, 128], q8),
        ("blk.3.attn_output.weight", &[256, 256], q8),
        ("blk.3.attn_q_norm.weight", &[64], f32),
        ("blk.3.ffn_gate_inp.weight", &[256, 16], f32),
        ("blk.3.ffn_gate_exps.weight", &[256, 256, 16], q8),
        ("blk.3.ffn_down_exps.weight", &[256, 256, 16], q8),
        ("blk.3.ffn_gate_inp_shexp.weight", &[256], f32),
        ("blk.3.ffn_up_shexp.weight", &[256, 256], q8),
        ("blk.3.ffn_down_shexp.weight", &[256, 256], q8),
    ];
    for (name, dims, dtype) in want {
        assert_eq!(tensor_dims(&w, name), (dims.to_vec(), dtype), "{name}");
    }
    assert!(!has_tensor(&w, "blk.0.attn_q.weight"));
    assert!(!has_tensor(&w, "blk.3.ssm_a"));
    assert!(!has_tensor(&w, "blk.0.ffn_norm.weight"));
    let f = w.layout("<test>").unwrap();
    assert_eq!(meta_u64(&f, "qwen35moe.ssm.inner_size"), 512);
    assert_eq!(meta_u64(&f, "qwen35moe.rope.dimension_count"), 16);
    assert_eq!(
        meta_u64(&f, "qwen35moe.expert_shared_feed_forward_length"),
        256
    );
    let sections = f.get("qwen35moe.rope.dimension_sections").unwrap();
    assert_eq!(
        sections.as_array().unwrap(),
        [3, 3, 2, 0].map(MetaValue::I32).as_slice()
    );
}

/// `ssm_a` negative (the decay exp(softplus(·)·a) below 1), conv taps F32.
#[test]
fn qwen35_values_keep_the_recurrence_bounded() {
    let s = spec(Architecture::Qwen35, "tiny", "Q8_0", 0);
    let f = GgufFile::from_bytes("q.gguf", &s.to_bytes().unwrap()).unwrap();
    for il in 0..3 {
        let a = f32_tensor(&f, &format!("blk.{il}.ssm_a"));
        assert!(a.iter().all(|&v| v < 0.0 && v > -3.0), "{a:?}");
    }
    assert!(f.tensor("blk.3.ssm_a").is_none());
}

/// `llama_model_gemma4::load_arch_tensors`: sliding layers head 64 × 2 KV,
/// the global layer head 128 × 1 KV without attn_v; `rope_freqs` 1.0 for a
/// quarter of the 64 pairs, 1e30 for the rest.
#[test]
fn gemma4_tensors_are_llama_cpps() {
    let s = spec(Architecture::Gemma4, "tiny-moe", "Q8_0", 0);
    let w = s.writer().unwrap();
    let f32 = GgmlType::F32;
    let q8 = GgmlType::Q8_0;
    let want: [(&str, &[u64], GgmlType); 14] = [
        ("rope_freqs.weight", &[64], f32),
        ("blk.0.attn_q.weight", &[256, 256], q8),
        ("blk.0.attn_k.weight", &[256, 128], q8),
        ("blk.0.attn_v.weight", &[256, 128], q8),
        ("blk.0.attn_q_norm.weight", &[64], f32),
        ("blk.5.attn_q.weight", &[256, 512], q8),
        ("blk.5.attn_k.weight", &[256, 128], q8),
        ("blk.5.attn_output.weight", &[512, 256], q8),
        ("blk.5.attn_k_norm.weight", &[128], f32),
        ("blk.5.layer_output_scale.weight", &[1], f32),
        ("blk.5.ffn_gate_inp.scale", &[256], f32),
        ("blk.5.post_ffw_norm_2.weight", &[256], f32),
        ("blk.5.ffn_up_exps.weight", &[256, 256, 16], q8),
        ("blk.5.ffn_down_exps.scale", &[16], f32),
    ];
    for (name, dims, dtype) in want {
        assert_eq!(tensor_dims(&w, name), (dims.to_vec(), dtype), "{name}");
    }
    assert!(!has_tensor(&w, "blk.5.attn_v.weight"));
    let f = GgufFile::from_bytes("g.gguf", &s.to_bytes().unwrap()).unwrap();
    let freqs = f32_tensor(&f, "rope_freqs.weight");
    assert!(freqs[..16].iter().all(|&v| v == 1.0));
    assert!(freqs[16..].iter().all(|&v| v == 1e30));
    let kv = f.get("gemma4.attention.head_count_kv").unwrap();
    assert_eq!(
        kv.as_array().unwrap(),
        [2, 2, 2, 2, 2, 1].map(MetaValue::U32).as_slice()
    );
    let scale = f32_tensor(&f, "blk.0.layer_output_scale.weight");
    assert!((scale[0] - 1.0).abs() <= 0.1, "{scale:?}");
}

/// The files llama.cpp's references were recorded on (tests/data/synth-*.json,
/// scripts/record-reference.py) are still what the writer writes: a change
/// to the writer must come with new references.
#[test]
fn issue14_references_match_the_writer() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data");
    for file in [
        "synth-qwen35-q8_0.json",
        "synth-qwen35moe-q8_0.json",
        "synth-qwen35moe-q4_k_m.json",
        "synth-gemma4-q8_0.json",
        "synth-gemma4-moe-q8_0.json",
    ] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let r: serde_json::Value = serde_json::from_str(&text).unwrap();
        let synth = &r["synth"];
        let arch = Architecture::from_name(synth["arch"].as_str().unwrap()).unwrap();
        let s = spec(
            arch,
            synth["preset"].as_str().unwrap(),
            synth["quant"].as_str().unwrap(),
            synth["seed"].as_u64().unwrap(),
        );
        let bytes = s.to_bytes().unwrap();
        assert_eq!(
            bytes.len() as u64,
            r["gguf_bytes"].as_u64().unwrap(),
            "{file}"
        );
        assert_eq!(
            sha256_hex(&bytes),
            r["gguf_sha256"].as_str().unwrap(),
            "{file}"
        );
        // llama.cpp generated, and not one token over and over.
        for g in r["greedy"].as_array().unwrap() {
            let tokens = g["tokens"].as_array().unwrap();
            assert_eq!(tokens.len(), 24, "{file}");
            let distinct: std::collections::BTreeSet<u64> =
                tokens.iter().map(|t| t.as_u64().unwrap()).collect();
            assert!(distinct.len() > 12, "{file}: {distinct:?}");
        }
    }
}
