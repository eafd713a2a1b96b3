//! The CPU forward pass against llama.cpp's recorded greedy continuations
//! (`shared/reference/*.json`).
//!
//! Both llama.cpp and we quantize every matmul's activations to Q8 blocks.
//! In these small models a few activations are huge, so a block holding
//! one has a coarse step, and a 1e-6 relative change anywhere upstream
//! flips roundings that move later log-probabilities by up to ~0.25 (we
//! measured it: scaling every activation by 1 +- 1e-6 moves SmolLM2's
//! top-5 log-probs at step 5 by 0.1-0.25). Two correct implementations
//! that sum in a different order therefore differ by that much at single
//! steps (more for unlikely tokens, whose logits are far from the max), and
//! by about 0.1 on average: measured over all 960 top-5 entries, the mean
//! deviation is 0.09 (SmolLM2) and 0.12 (Gemma-3), flat over positions.
//! The 0.05 per-entry bound the model-core issue asks for is below that
//! noise and is NOT met; see docs/numerics.md. The test checks:
//! - teacher-forced on llama.cpp's tokens: the mean deviation of the top-5
//!   log-probabilities, and the worst deviation of llama.cpp's own pick at
//!   each step, stay within the noise (a wrong RoPE, norm or attention
//!   gives deviations of whole units everywhere);
//! - free-running greedy generation gives llama.cpp's tokens up to the
//!   first step whose top-2 gap is inside the noise.

use strata_kernels::CpuBackend;
use strata_model::arch::HyperParams;
use strata_model::GgufFile;
use strata_tests::{model_path, reference, GEMMA3, SMOLLM2};
use strata_worker::generate::{generate, prefill};
use strata_worker::sampler::log_sum_exp;
use strata_worker::{LayerRange, Sampler, SamplingParams, Stage};

/// Mean |our log-prob - llama.cpp's| over every top-5 entry of every step.
const MEAN_LOGPROB_TOLERANCE: f32 = 0.15;
/// Bound on the deviation of the token llama.cpp picked at each step. The
/// other top-5 entries, further below the max logit, swing more (up to
/// ~1.2 at -10) and move with any reordering of a kernel's sums, so only
/// the mean covers them.
const MAX_LOGPROB_DEVIATION: f32 = 0.5;
/// Top-2 gap within which a greedy pick may go either way.
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
    let hp = HyperParams::from_gguf(&file).unwrap();
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

fn teacher_forced(model_file: &str, reference_file: &str) {
    let mut stage = load(model_file);
    let (mut sum, mut n, mut worst) = (0f64, 0usize, (0f32, String::new()));
    for case in cases(reference_file) {
        let mut input = case.prompt.clone();
        input.extend(&case.tokens[..case.tokens.len() - 1]);
        let logits = prefill(&mut stage, 0, 0, &input, Some(0)).unwrap();
        stage.release(0);
        for (i, top) in case.top.iter().enumerate() {
            let row = &logits[case.prompt.len() - 1 + i];
            let z = log_sum_exp(row);
            for (rank, &(id, lp)) in top.iter().enumerate() {
                let dev = (row[id as usize] - z - lp).abs();
                sum += dev as f64;
                n += 1;
                if rank == 0 && dev > worst.0 {
                    worst = (
                        dev,
                        format!(
                            "{:?} step {i} token {id}: {} vs llama.cpp {lp}",
                            case.label,
                            row[id as usize] - z
                        ),
                    );
                }
            }
        }
    }
    let mean = (sum / n as f64) as f32;
    eprintln!(
        "{model_file}: mean top-5 logprob deviation {mean:.4} over {n}, worst for llama.cpp's pick {:.4} at {}",
        worst.0, worst.1
    );
    assert!(
        mean < MEAN_LOGPROB_TOLERANCE,
        "{model_file}: mean deviation {mean} (worst {})",
        worst.1
    );
    assert!(worst.0 < MAX_LOGPROB_DEVIATION, "{model_file}: {}", worst.1);
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
