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
            assert_eq!(
                experts.count(),
                if s.shape.experts.is_some() {
                    3 * s.shape.n_layers
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
