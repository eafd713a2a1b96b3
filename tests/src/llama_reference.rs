//! Checking the CPU forward pass against llama.cpp's recorded greedy
//! continuations (the `greedy` section of tests/data/*.json, as
//! scripts/record-reference.py writes it), shared by the reference tests:
//! - teacher-forced on llama.cpp's tokens, fed in llama-server's batches
//!   (`prompt_batches`), every top-5 log-probability within
//!   [`MAX_LOGPROB_DEVIATION`] of llama.cpp's and the greedy pick
//!   llama.cpp's token unless its top two were within [`TIE`];
//! - free-running greedy generation gives llama.cpp's tokens up to the
//!   first near-tie ([`NEAR_TIE`]).
//!
//! A step whose token left llama-server's text an incomplete UTF-8
//! sequence has no probabilities (`top` null); only its token is checked.

use std::path::Path;

use sha2::{Digest, Sha256};
use strata_kernels::CpuBackend;
use strata_model::arch::Architecture;
use strata_model::attention_order::{prompt_orders, split_ubatches, ServerBatching};
use strata_model::synth::{QuantScheme, SynthSpec};
use strata_worker::generate::{decode_step, generate, prefill_rows, tiled_of};
use strata_worker::{Sampler, SamplingParams, Stage};

use crate::deviation::{argmax, LogprobDeviation};

/// Bound on |our log-prob - llama.cpp's| for every top-5 entry of every step.
pub const MAX_LOGPROB_DEVIATION: f32 = 0.05;
/// Top-2 gap of llama.cpp's under which a teacher-forced greedy pick may go
/// the other way: twice the log-prob bound.
pub const TIE: f32 = 2.0 * MAX_LOGPROB_DEVIATION;
/// Top-2 gap within which free-running generation may diverge: its prompt
/// goes in one batch, whatever llama-server did (reference_greedy.rs).
pub const NEAR_TIE: f32 = 0.5;

pub struct Step {
    pub token: u32,
    /// llama.cpp's top-5 `(token, logprob)`, where it reported them.
    pub top: Option<Vec<(u32, f32)>>,
}

pub struct Case {
    pub label: String,
    pub prompt: Vec<u32>,
    /// How llama-server batched the prompt.
    pub prompt_batches: Vec<usize>,
    /// Its `-ub`: each batch is computed in ubatches of this many rows.
    pub n_ubatch: usize,
    pub steps: Vec<Step>,
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn cases(r: &serde_json::Value) -> Vec<Case> {
    let n_ubatch = server_arg(r, "-ub").map_or(ServerBatching::DEFAULT_N_UBATCH, |v| {
        v.parse().expect("-ub takes a number")
    });
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
            n_ubatch,
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
pub fn synthesize(r: &serde_json::Value, dir: &Path) -> std::path::PathBuf {
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

/// The value of `flag` in the reference's llama-server arguments.
pub fn server_arg<'a>(r: &'a serde_json::Value, flag: &str) -> Option<&'a str> {
    // The last one counts, as llama-server reads them.
    let args = r["llama_cpp"]["server_args"].as_array()?;
    let i = args.iter().rposition(|a| a == flag)?;
    args.get(i + 1)?.as_str()
}

/// Feeds `prompt` to sequence 0 in `batches` of llama-server's, each
/// computed in ubatches of `n_ubatch` rows: a row takes ggml's tiled order
/// where its ubatch does (`strata_model::attention_order`). Returns the
/// logits after the last batch.
pub fn prefill_as_batched(
    stage: &mut Stage<CpuBackend>,
    prompt: &[u32],
    batches: &[usize],
    n_ubatch: usize,
) -> Vec<Vec<f32>> {
    assert_eq!(batches.iter().sum::<usize>(), prompt.len());
    let ranges: Vec<_> = batches
        .iter()
        .scan(0, |start, &n| {
            *start += n;
            Some(*start - n..*start)
        })
        .collect();
    let tiled = tiled_of(&prompt_orders(
        stage.kv_type(),
        &split_ubatches(&ranges, n_ubatch),
    ));
    let mut logits = Vec::new();
    for r in ranges {
        logits = prefill_rows(stage, 0, r.start, &prompt[r.clone()], None, &tiled[r]).unwrap();
    }
    logits
}

/// Logits before each of llama.cpp's generated tokens, fed as llama-server fed them.
fn teacher_forced_logits(stage: &mut Stage<CpuBackend>, case: &Case) -> Vec<Vec<f32>> {
    let mut logits = prefill_as_batched(stage, &case.prompt, &case.prompt_batches, case.n_ubatch);
    let mut pos = case.prompt.len();
    for step in &case.steps[..case.steps.len() - 1] {
        logits.push(decode_step(stage, 0, pos, step.token).unwrap());
        pos += 1;
    }
    stage.release(0);
    logits
}

fn top2_gap(top: &Option<Vec<(u32, f32)>>) -> Option<f32> {
    top.as_ref().map(|t| t[0].1 - t[1].1)
}

pub fn teacher_forced(name: &str, stage: &mut Stage<CpuBackend>, cases: &[Case]) {
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

pub fn free_running(name: &str, stage: &mut Stage<CpuBackend>, cases: &[Case]) {
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
