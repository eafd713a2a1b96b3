//! The CPU forward pass against llama.cpp's recorded greedy continuations
//! (`tests/data/*.json`, recorded with `llama-server` on a CPU).
//!
//! The CPU backend computes every op in ggml's arithmetic (docs/numerics.md),
//! so given the same batches it gives llama.cpp's logits bit for bit. The
//! batches matter: which of llama.cpp's kernels a matmul takes (and so its
//! f32 rounding) depends on how many tokens it multiplies. So the test feeds
//! the tokens as llama-server did:
//! - the prompt in one batch, except that for models with sliding-window
//!   layers (Gemma-3) llama-server processes the last 4 prompt tokens
//!   separately, to checkpoint the SWA cache before them (llama.cpp PR
//!   20288);
//! - then one token per step.
//!
//! It checks, teacher-forced on llama.cpp's tokens, that every top-5
//! log-probability of every step is within 0.05 of llama.cpp's (we measure
//! ~2e-4: log-softmax rounding) and that the greedy pick is llama.cpp's
//! token at all 32 steps of every prompt, and that free-running greedy generation
//! through `generate` (the whole prompt in one batch) gives llama.cpp's
//! tokens up to the first near-tie.

use strata_kernels::CpuBackend;
use strata_model::arch::ModelSpec;
use strata_model::attention_order::ServerBatching;
use strata_model::GgufFile;
use strata_tests::deviation::{argmax, LogprobDeviation};
use strata_tests::llama_reference::prefill_as_batched;
use strata_tests::{model_path, reference, GEMMA3, SMOLLM2};
use strata_worker::generate::{generate, prefill};
use strata_worker::{LayerRange, Sampler, SamplingParams, Stage};

/// Bound on |our log-prob - llama.cpp's| for every top-5 entry of every step.
const MAX_LOGPROB_DEVIATION: f32 = 0.05;
/// Top-2 gap within which a greedy pick may go either way when the prompt
/// is batched differently from llama-server (see the module comment).
const NEAR_TIE: f32 = 0.5;

struct Case {
    label: String,
    prompt: Vec<u32>,
    tokens: Vec<u32>,
    /// Per step: llama.cpp's top-5 `(token, logprob)`.
    top: Vec<Vec<(u32, f32)>>,
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn cases(reference_file: &str) -> Vec<Case> {
    reference(reference_file)["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            label: c["prompt"].as_str().unwrap().to_string(),
            prompt: ids(&c["prompt_ids"]),
            tokens: ids(&c["tokens"]),
            top: c["steps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    s["top"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| (p[0].as_u64().unwrap() as u32, p[1].as_f64().unwrap() as f32))
                        .collect()
                })
                .collect(),
        })
        .collect()
}

fn load(model_file: &str) -> Stage<CpuBackend> {
    let file = GgufFile::open(model_path(model_file)).unwrap();
    let hp = ModelSpec::from_gguf(&file).unwrap();
    Stage::load(
        CpuBackend::new(),
        &file,
        LayerRange {
            first: 0,
            end: hp.n_layers,
        },
        256,
    )
    .unwrap()
}

/// Logits before each of llama.cpp's generated tokens, fed as llama-server fed them.
fn teacher_forced_logits(stage: &mut Stage<CpuBackend>, case: &Case) -> Vec<Vec<f32>> {
    // The prompt's batches as llama-server cuts them (see the module comment).
    let batching = ServerBatching::new(stage.spec().server_checkpoints());
    let batches: Vec<usize> = batching
        .batches(case.prompt.len())
        .iter()
        .map(|b| b.len())
        .collect();
    let mut logits = prefill_as_batched(stage, &case.prompt, &batches, batching.n_ubatch);
    let mut pos = case.prompt.len();
    for &token in &case.tokens[..case.tokens.len() - 1] {
        logits.extend(prefill(stage, 0, pos, &[token], None).unwrap());
        pos += 1;
    }
    stage.release(0);
    logits
}

fn teacher_forced(model_file: &str, reference_file: &str) {
    let mut stage = load(model_file);
    let mut deviation = LogprobDeviation::default();
    for case in cases(reference_file) {
        let logits = teacher_forced_logits(&mut stage, &case);
        for (i, (top, row)) in case.top.iter().zip(&logits).enumerate() {
            // Fed as llama-server was, greedy picks llama.cpp's token at every step.
            let pick = argmax(row);
            assert_eq!(
                pick as u32, case.tokens[i],
                "{model_file} {:?} step {i}: greedy pick",
                case.label
            );
            let at = format!("{:?} step {i}", case.label);
            deviation.add_step(row, top, &at);
        }
    }
    deviation.check(model_file, MAX_LOGPROB_DEVIATION);
}

fn free_running(model_file: &str, reference_file: &str) {
    let mut stage = load(model_file);
    for case in cases(reference_file) {
        let mut sampler = Sampler::new(SamplingParams::greedy());
        let ours = generate(
            &mut stage,
            &case.prompt,
            case.tokens.len(),
            &mut sampler,
            |_| true,
        )
        .unwrap();
        for (i, (got, &want)) in ours.iter().zip(&case.tokens).enumerate() {
            if got.token == want {
                continue;
            }
            let gap = case.top[i][0].1 - case.top[i][1].1;
            assert!(
                gap < NEAR_TIE,
                "{model_file} {:?} step {i}: generated {} but llama.cpp {want}, whose top-2 gap {gap} is outside the noise",
                case.label,
                got.token
            );
            eprintln!(
                "{model_file} {:?}: diverged at step {i} on a near-tie (gap {gap:.3})",
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

#[test]
fn smollm2_teacher_forced_logprobs_match_llama_cpp() {
    teacher_forced(SMOLLM2, "smollm2-135m.json");
}

#[test]
fn gemma3_teacher_forced_logprobs_match_llama_cpp() {
    teacher_forced(GEMMA3, "gemma3-270m.json");
}

#[test]
fn smollm2_greedy_generation_matches_llama_cpp() {
    free_running(SMOLLM2, "smollm2-135m.json");
}

#[test]
fn gemma3_greedy_generation_matches_llama_cpp() {
    free_running(GEMMA3, "gemma3-270m.json");
}
