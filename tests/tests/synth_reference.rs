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

use strata_kernels::CpuBackend;
use strata_model::arch::ModelSpec;
use strata_model::GgufFile;
use strata_tests::llama_reference::{cases, free_running, synthesize, teacher_forced};
use strata_tests::reference;
use strata_worker::{LayerRange, Stage};

fn load(path: &Path) -> Stage<CpuBackend> {
    let file = GgufFile::open(path).unwrap();
    let spec = ModelSpec::from_gguf(&file).unwrap();
    let layers = LayerRange {
        first: 0,
        end: spec.n_layers,
    };
    Stage::load(CpuBackend::new(), &file, layers, 1024).unwrap()
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
