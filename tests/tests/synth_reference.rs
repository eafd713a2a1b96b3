//! The CPU forward pass against llama.cpp's greedy continuations on
//! `strata synth` models: the architectures no real model here has
//! (tests/data/synth-*.json, recorded by scripts/record-reference.py; see
//! tests/data/README.md).
//!
//! Each reference names the synth arguments and the sha256 of the GGUF
//! llama.cpp read. The test synthesizes the same model through the library,
//! checks the hash (a changed generator or quantizer makes the reference
//! stale: re-record it), then, as reference_greedy.rs does for the real
//! models:
//! - teacher-forced on llama.cpp's tokens, fed in llama-server's batches
//!   (recorded in `prompt_batches`: the prompt whole, or for sliding-window
//!   models all but its last 4 tokens and then those; then one token per
//!   step), every top-5 log-probability must be within 0.05 of llama.cpp's
//!   and the greedy pick llama.cpp's token, unless llama.cpp's top two were
//!   within [`TIE`] (random weights give near-uniform logits: gaps of 1e-4
//!   happen);
//! - free-running greedy generation must give llama.cpp's tokens up to the
//!   first near-tie.
//!
//! A step whose token left llama-server's text an incomplete UTF-8 sequence
//! has no probabilities (`top` null); only its token is checked.

use std::path::Path;

use sha2::{Digest, Sha256};
use strata_kernels::CpuBackend;
use strata_model::arch::{Architecture, ModelSpec};
use strata_model::synth::{QuantScheme, SynthSpec};
use strata_model::GgufFile;
use strata_tests::deviation::{argmax, LogprobDeviation};
use strata_tests::reference;
use strata_worker::generate::{generate, prefill};
use strata_worker::{LayerRange, Sampler, SamplingParams, Stage};

/// Bound on |our log-prob - llama.cpp's| for every top-5 entry of every step.
const MAX_LOGPROB_DEVIATION: f32 = 0.05;
/// Top-2 gap of llama.cpp's under which a teacher-forced greedy pick may go
/// the other way: twice the log-prob bound.
const TIE: f32 = 2.0 * MAX_LOGPROB_DEVIATION;
/// Top-2 gap within which free-running generation may diverge: its prompt
/// goes in one batch, whatever llama-server did (reference_greedy.rs).
const NEAR_TIE: f32 = 0.5;

struct Step {
    token: u32,
    /// llama.cpp's top-5 `(token, logprob)`, where it reported them.
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
        .map(|c| Case {
            label: c["prompt"].as_str().unwrap().to_string(),
            prompt: ids(&c["prompt_ids"]),
            prompt_batches: c["prompt_batches"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_u64().unwrap() as usize)
                .collect(),
            steps: c["steps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| Step {
                    token: s["token"].as_u64().unwrap() as u32,
                    top: s["top"].as_array().map(|top| {
                        top.iter()
                            .map(|p| (p[0].as_u64().unwrap() as u32, p[1].as_f64().unwrap() as f32))
                            .collect()
                    }),
                })
                .collect(),
        })
        .collect()
}

/// The reference's model, synthesized into `dir`; panics if it is not the
/// file llama.cpp read.
fn synthesize(r: &serde_json::Value, dir: &Path) -> std::path::PathBuf {
    let s = &r["synth"];
    let arch_name = s["arch"].as_str().unwrap();
    let arch = Architecture::from_name(arch_name).unwrap();
    let quant_name = s["quant"].as_str().unwrap();
    let quant = QuantScheme::parse(quant_name)
        .unwrap_or_else(|| panic!("this build cannot synthesize {quant_name}"));
    let mut spec = SynthSpec::from_preset(arch, s["preset"].as_str().unwrap(), quant).unwrap();
    spec.seed = s["seed"].as_u64().unwrap();
    if let Some(n) = s["layers"].as_u64() {
        spec.shape.n_layers = n as usize;
    }
    let path = dir.join(format!("{arch_name}-{quant_name}.gguf"));
    spec.write(&path, |_, _| {}).unwrap();
    let sha: String = Sha256::digest(std::fs::read(&path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        sha,
        r["gguf_sha256"].as_str().unwrap(),
        "`{}` no longer writes the file llama.cpp was run on: the generator or \
         a quantizer changed; re-record with scripts/record-reference.py \
         (tests/data/README.md)",
        r["synth_command"].as_str().unwrap()
    );
    path
}

fn load(path: &Path) -> Stage<CpuBackend> {
    let file = GgufFile::open(path).unwrap();
    let spec = ModelSpec::from_gguf(&file).unwrap();
    let layers = LayerRange {
        first: 0,
        end: spec.n_layers,
    };
    Stage::load(CpuBackend::new(), &file, layers, 1024).unwrap()
}

/// Logits before each of llama.cpp's generated tokens, fed as llama-server fed them.
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
            // Without llama.cpp's probabilities at this step, the previous
            // step's gap says nothing: divergence there is a failure.
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

fn check(reference_file: &str) {
    let r = reference(reference_file);
    let dir = tempfile::tempdir().unwrap();
    let path = synthesize(&r, dir.path());
    let cases = cases(&r);
    let mut stage = load(&path);
    teacher_forced(reference_file, &mut stage, &cases);
    free_running(reference_file, &mut stage, &cases);
}

#[test]
fn qwen3moe_q8_0_matches_llama_cpp() {
    check("synth-qwen3moe-q8_0.json");
}

#[test]
fn qwen3moe_q4_k_m_matches_llama_cpp() {
    check("synth-qwen3moe-q4_k_m.json");
}

#[test]
fn gpt_oss_mxfp4_matches_llama_cpp() {
    check("synth-gpt-oss-mxfp4.json");
}

#[test]
fn gpt_oss_q8_0_matches_llama_cpp() {
    check("synth-gpt-oss-q8_0.json");
}

#[test]
fn mistral3_q8_0_matches_llama_cpp() {
    check("synth-mistral3-q8_0.json");
}

#[test]
fn qwen35_q8_0_matches_llama_cpp() {
    check("synth-qwen35-q8_0.json");
}

#[test]
fn qwen35moe_q8_0_matches_llama_cpp() {
    check("synth-qwen35moe-q8_0.json");
}

#[test]
fn qwen35moe_q4_k_m_matches_llama_cpp() {
    check("synth-qwen35moe-q4_k_m.json");
}

#[test]
fn gemma4_q8_0_matches_llama_cpp() {
    check("synth-gemma4-q8_0.json");
}

#[test]
fn gemma4_moe_q8_0_matches_llama_cpp() {
    check("synth-gemma4-moe-q8_0.json");
}

/// The E-series: per-layer embeddings, and layers 4-7 reading the KV of
/// layers 2 and 3.
#[test]
fn gemma4_e_series_q8_0_matches_llama_cpp() {
    check("synth-gemma4-e-q8_0.json");
}

/// With an MTP block after the trunk: loaded, and the trunk's tokens
/// unchanged (llama.cpp skips the block).
#[test]
fn qwen35_with_an_mtp_block_matches_llama_cpp() {
    check("synth-qwen35-mtp-q8_0.json");
}

/// A 599-token prompt, fed as llama-server split it (87, 508, 4 tokens):
/// the DeltaNet's recurrence over long prompt batches, then decode.
#[test]
fn qwen35_q8_0_long_prompt_matches_llama_cpp() {
    check("synth-qwen35-q8_0-long.json");
}
