//! The CPU forward pass past 512 KV cells with an f16 KV cache, against
//! llama.cpp's `llama-server -fa on` (tests/data/smollm2-135m-long.json,
//! recorded by scripts/record-reference.py; tests/data/README.md has the
//! command).
//!
//! A decode step over 512+ cells takes ggml-cpu's split-KV flash-attention
//! path: one chunk of the cells per thread, merged in order. Strata follows
//! it with two chunks whatever its threads, so the reference is recorded
//! with `-t 2`. Same checks as reference_kv_quant.rs: teacher-forced
//! top-5 log-probabilities within 0.05 of llama.cpp's and its greedy
//! picks, then free-running generation.
//!
//! - `smollm2-135m-long.json` fed the prompts in 32-token batches (`-b 32
//!   -ub 32`): llama.cpp's prompt attention took its one-chunk path.
//! - `smollm2-135m-tiled.json` fed them as llama-server does by default,
//!   in 512-row ubatches: a ubatch of 64+ rows takes ggml's tiled path
//!   (f16 K/V only), which sums V in f32 where the one-chunk path sums it
//!   in f16. strata follows it (`kernels/src/cpu/attention_tiled.rs`);
//!   without it these prompts were 0.75 off llama.cpp.

use strata_kernels::CpuBackend;
use strata_model::arch::ModelSpec;
use strata_model::profile::KvType;
use strata_model::GgufFile;
use strata_tests::llama_reference::{cases, free_running, server_arg, teacher_forced};
use strata_tests::{model_path, reference, SMOLLM2};
use strata_worker::{LayerRange, Stage};

/// KV positions of the stage: llama-server's `-c`, which the prompts and
/// their continuations fit.
const KV_TOKENS: usize = 1024;
/// Positions from which a decode step spans 512+ of llama.cpp's KV cells
/// (it pads the cells it attends over to a multiple of 256).
const SPLIT_FROM_POSITION: usize = 256;

#[test]
fn smollm2_past_512_kv_cells_matches_llama_cpp() {
    let name = "smollm2-135m-long.json";
    let r = reference(name);
    assert!(
        cases(&r).iter().all(|c| c.n_ubatch < 64),
        "{name}: recorded for the one-chunk path, in ubatches under 64 rows"
    );
    check_past_512_cells(name);
}

#[test]
fn smollm2_prompts_in_512_row_ubatches_match_llama_cpp() {
    let name = "smollm2-135m-tiled.json";
    let r = reference(name);
    assert!(
        cases(&r)
            .iter()
            .any(|c| c.prompt.len() > 2 * SPLIT_FROM_POSITION
                && c.n_ubatch >= 64
                && c.prompt_batches.iter().any(|&n| n >= 64)),
        "{name}: no long prompt fed in a ubatch of 64+ rows (ggml's tiled path)"
    );
    check_past_512_cells(name);
}

/// Both checks over the reference `name` (f16 KV, `-fa on`, `-t 2`, a
/// prompt past 512 tokens), on the CPU stage.
fn check_past_512_cells(name: &str) {
    let r = reference(name);
    assert_eq!(
        server_arg(&r, "-fa"),
        Some("on"),
        "recorded without flash attention"
    );
    assert_eq!(
        server_arg(&r, "-ctk"),
        None,
        "recorded with a quantized KV cache"
    );
    assert_eq!(
        server_arg(&r, "-t"),
        Some("2"),
        "strata splits a decode step's attention in 2 chunks, as llama.cpp on 2 threads"
    );
    let cases = cases(&r);
    assert!(
        cases
            .iter()
            .any(|c| c.prompt.len() > 2 * SPLIT_FROM_POSITION),
        "{name}: no prompt past 512 tokens"
    );
    let file = GgufFile::open(model_path(SMOLLM2)).unwrap();
    let spec = ModelSpec::from_gguf(&file).unwrap();
    let layers = LayerRange {
        first: 0,
        end: spec.n_layers,
    };
    let mut stage =
        Stage::load_kv(CpuBackend::new(), &file, layers, KV_TOKENS, KvType::F16).unwrap();
    teacher_forced(name, &mut stage, &cases);
    free_running(name, &mut stage, &cases);
}
