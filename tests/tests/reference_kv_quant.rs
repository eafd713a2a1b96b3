//! The CPU forward pass with a q8_0 / q4_0 KV cache against llama.cpp's
//! `llama-server -ctk T -ctv T -fa on` (tests/data/*-kv-*.json, recorded by
//! scripts/record-reference.py; tests/data/README.md has the commands).
//!
//! For quantized K/V, llama.cpp's CPU flash attention always takes its
//! one-chunk vector path, and strata follows it (and llama.cpp's Hadamard
//! rotation of K, Q and V; docs/numerics.md), so the bound holds at any
//! context: each reference has a prompt of several hundred tokens. As in
//! synth_reference.rs, teacher-forced on llama.cpp's tokens, fed in
//! llama-server's batches (`prompt_batches`), every top-5 log-probability
//! must be within 0.05 of llama.cpp's and the greedy pick llama.cpp's token
//! unless llama.cpp's top two were within [`TIE`]; free-running greedy
//! generation must give llama.cpp's tokens up to the first near-tie.

use std::path::Path;

use strata_kernels::CpuBackend;
use strata_model::arch::ModelSpec;
use strata_model::profile::KvType;
use strata_model::GgufFile;
use strata_tests::llama_reference::{cases, free_running, synthesize, teacher_forced};
use strata_tests::{model_path, reference, GEMMA3, SMOLLM2};
use strata_worker::{LayerRange, Stage};

/// KV positions of the stage: the longest prompt and its continuation fit.
const KV_TOKENS: usize = 1024;

/// The KV type llama-server was given (`-ctk`; `-ctv` must be the same).
fn recorded_kv_type(r: &serde_json::Value) -> KvType {
    let args: Vec<&str> = r["llama_cpp"]["server_args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let after = |flag: &str| {
        let i = args.iter().position(|a| *a == flag).unwrap();
        args[i + 1]
    };
    assert_eq!(after("-ctk"), after("-ctv"), "K and V types differ");
    assert_eq!(after("-fa"), "on", "recorded without flash attention");
    KvType::from_name(after("-ctk")).unwrap()
}

fn load(path: &Path, kv_type: KvType) -> Stage<CpuBackend> {
    let file = GgufFile::open(path).unwrap();
    let spec = ModelSpec::from_gguf(&file).unwrap();
    let layers = LayerRange {
        first: 0,
        end: spec.n_layers,
    };
    Stage::load_kv(CpuBackend::new(), &file, layers, KV_TOKENS, kv_type).unwrap()
}

/// `model_file`: a file of the model cache, or `None` for a synth reference.
fn check(reference_file: &str, model_file: Option<&str>) {
    let r = reference(reference_file);
    let kv_type = recorded_kv_type(&r);
    let dir = tempfile::tempdir().unwrap();
    let path = match model_file {
        Some(f) => model_path(f),
        None => synthesize(&r, dir.path()),
    };
    let cases = cases(&r);
    assert!(
        cases.iter().any(|c| c.prompt.len() >= 256),
        "{reference_file}: no long prompt"
    );
    let mut stage = load(&path, kv_type);
    teacher_forced(reference_file, &mut stage, &cases);
    free_running(reference_file, &mut stage, &cases);
}

#[test]
fn smollm2_kv_q8_0_matches_llama_cpp() {
    check("smollm2-135m-kv-q8_0.json", Some(SMOLLM2));
}

#[test]
fn gemma3_kv_q8_0_matches_llama_cpp() {
    check("gemma3-270m-kv-q8_0.json", Some(GEMMA3));
}

#[test]
fn synth_llama_kv_q4_0_matches_llama_cpp() {
    check("synth-llama-kv-q4_0.json", None);
}

#[test]
fn smollm2_kv_q4_0_matches_llama_cpp() {
    check("smollm2-135m-kv-q4_0.json", Some(SMOLLM2));
}
