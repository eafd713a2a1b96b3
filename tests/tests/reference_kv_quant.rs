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

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use strata_kernels::CpuBackend;
use strata_model::arch::{Architecture, ModelSpec};
use strata_model::profile::KvType;
use strata_model::synth::{QuantScheme, SynthSpec};
use strata_model::GgufFile;
use strata_tests::deviation::{argmax, LogprobDeviation};
use strata_tests::{model_path, reference, GEMMA3, SMOLLM2};
use strata_worker::generate::{generate, prefill};
use strata_worker::{LayerRange, Sampler, SamplingParams, Stage};

/// Bound on |our log-prob - llama.cpp's| for every top-5 entry of every step.
const MAX_LOGPROB_DEVIATION: f32 = 0.05;
/// Top-2 gap of llama.cpp's under which a teacher-forced pick may go the
/// other way: twice the log-prob bound.
const TIE: f32 = 2.0 * MAX_LOGPROB_DEVIATION;
/// Top-2 gap within which free-running generation (the prompt in one
/// batch, whatever llama-server did) may diverge.
const NEAR_TIE: f32 = 0.5;
/// KV positions of the stage: the longest prompt and its continuation fit.
const KV_TOKENS: usize = 1024;

struct Step {
    token: u32,
    top: Option<Vec<(u32, f32)>>,
}

struct Case {
    label: String,
    prompt: Vec<u32>,
    prompt_batches: Vec<usize>,
    steps: Vec<Step>,
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn cases(r: &serde_json::Value) -> Vec<Case> {
    r["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let label: String = c["prompt"].as_str().unwrap().chars().take(40).collect();
            Case {
                label,
                prompt: ids(&c["prompt_ids"]),
                prompt_batches: ids(&c["prompt_batches"])
                    .into_iter()
                    .map(|n| n as usize)
                    .collect(),
                steps: c["steps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| Step {
                        token: s["token"].as_u64().unwrap() as u32,
                        top: s["top"].as_array().map(|top| {
                            top.iter()
                                .map(|p| {
                                    (p[0].as_u64().unwrap() as u32, p[1].as_f64().unwrap() as f32)
                                })
                                .collect()
                        }),
                    })
                    .collect(),
            }
        })
        .collect()
}

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

/// A synth reference's model, synthesized into `dir` and checked against
/// the hash of the file llama.cpp read.
fn synthesize(r: &serde_json::Value, dir: &Path) -> PathBuf {
    let s = &r["synth"];
    let arch_name = s["arch"].as_str().unwrap();
    let arch = Architecture::from_name(arch_name).unwrap();
    let quant = QuantScheme::parse(s["quant"].as_str().unwrap()).unwrap();
    let mut spec = SynthSpec::from_preset(arch, s["preset"].as_str().unwrap(), quant).unwrap();
    spec.seed = s["seed"].as_u64().unwrap();
    if let Some(n) = s["layers"].as_u64() {
        spec.shape.n_layers = n as usize;
    }
    let path = dir.join("model.gguf");
    spec.write(&path, |_, _| {}).unwrap();
    let sha: String = Sha256::digest(std::fs::read(&path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        sha,
        r["gguf_sha256"].as_str().unwrap(),
        "`{}` no longer writes the file llama.cpp was run on: re-record (tests/data/README.md)",
        r["synth_command"].as_str().unwrap()
    );
    path
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

fn teacher_forced_logits(stage: &mut Stage<CpuBackend>, case: &Case) -> Vec<Vec<f32>> {
    assert_eq!(case.prompt_batches.iter().sum::<usize>(), case.prompt.len());
    let (mut pos, mut logits) = (0, Vec::new());
    for &n in &case.prompt_batches {
        logits = prefill(stage, 0, pos, &case.prompt[pos..pos + n], None).unwrap();
        pos += n;
    }
    for step in &case.steps[..case.steps.len() - 1] {
        logits.extend(prefill(stage, 0, pos, &[step.token], None).unwrap());
        pos += 1;
    }
    stage.release(0);
    logits
}

fn top2_gap(top: &Option<Vec<(u32, f32)>>) -> Option<f32> {
    top.as_ref().map(|t| t[0].1 - t[1].1)
}

fn teacher_forced(name: &str, stage: &mut Stage<CpuBackend>, cases: &[Case]) {
    let mut deviation = LogprobDeviation::default();
    for case in cases {
        let logits = teacher_forced_logits(stage, case);
        for (i, (step, row)) in case.steps.iter().zip(&logits).enumerate() {
            let pick = argmax(row) as u32;
            let tie = top2_gap(&step.top).is_some_and(|g| g < TIE);
            assert!(
                pick == step.token || tie,
                "{name} {:?} step {i}: greedy pick {pick}, llama.cpp {} (top-2 gap {:?})",
                case.label,
                step.token,
                top2_gap(&step.top)
            );
            let at = format!("{:?} step {i}", case.label);
            deviation.add_step(row, step.top.as_deref().unwrap_or_default(), &at);
        }
    }
    deviation.check(name, MAX_LOGPROB_DEVIATION);
}

fn free_running(name: &str, stage: &mut Stage<CpuBackend>, cases: &[Case]) {
    for case in cases {
        let mut sampler = Sampler::new(SamplingParams::greedy());
        let ours = generate(stage, &case.prompt, case.steps.len(), &mut sampler, |_| {
            true
        })
        .unwrap();
        for (i, (got, want)) in ours.iter().zip(&case.steps).enumerate() {
            if got.token == want.token {
                continue;
            }
            let gap = top2_gap(&want.top).unwrap_or(f32::INFINITY);
            assert!(
                gap < NEAR_TIE,
                "{name} {:?} step {i}: generated {} but llama.cpp {}, whose top-2 gap {gap} is outside the noise",
                case.label,
                got.token,
                want.token
            );
            eprintln!(
                "{name} {:?}: diverged at step {i} on a near-tie (gap {gap:.3})",
                case.label
            );
            break;
        }
    }
    assert_eq!(
        stage.blocks().used_blocks(),
        0,
        "generation frees its KV blocks"
    );
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
