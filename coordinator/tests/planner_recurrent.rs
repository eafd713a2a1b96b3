//! Placement of hybrid models (Qwen3.5/3.6: gated DeltaNet layers with a
//! recurrent state per sequence and no KV, every fourth layer full attention
//! with KV): a stage needs room for its layers' state as for their KV.

use strata_coordinator::planner::{plan, try_plan, PlanError, PlanRequest, SafetyMargin};
use strata_model::arch::{Architecture, ModelSpec};
use strata_model::profile::{KvType, MemoryProfile, STATE_COPIES_PER_SEQ};

mod common;
use common::*;

const PARALLEL: usize = 4;

/// Recurrent state of one sequence in one DeltaNet layer of Qwen3.6-27B, by
/// llama.cpp's formulas (`llama_hparams::n_embd_r` + `n_embd_s`, both f32;
/// docs/plans/qwen35-gemma4.md §1.5): conv state `(d_conv - 1) * (d_inner +
/// 2 * n_group * d_state)` + SSM state `d_state * d_inner`, with d_conv 4,
/// d_state 128, 16 key groups, d_inner 6144 (48 value heads of 128).
const STATE_PER_LAYER: u64 = 4 * (3 * (6144 + 2 * 16 * 128) + 128 * 6144);

/// 64 layers, every fourth full attention (`full_attention_interval` 4).
fn is_recurrent(il: usize) -> bool {
    !(il + 1).is_multiple_of(4)
}

fn qwen35_27b() -> (ModelSpec, MemoryProfile) {
    synth(Architecture::Qwen35, "27b", "Q4_K_M")
}

fn request(hp: &ModelSpec, p: &MemoryProfile, ctx: usize) -> PlanRequest {
    PlanRequest {
        parallel: PARALLEL,
        ..PlanRequest::new(p.clone(), hp.d_model, ctx, KvType::F16)
    }
}

/// State of layers `[first, end)` for [`PARALLEL`] sequences, by the
/// formula: each holds its live state and the prefix cache's snapshot
/// ([`STATE_COPIES_PER_SEQ`]).
fn state_of(first: usize, end: usize) -> u64 {
    (first..end).filter(|&il| is_recurrent(il)).count() as u64
        * STATE_PER_LAYER
        * (PARALLEL * STATE_COPIES_PER_SEQ) as u64
}

#[test]
fn qwen35_27b_stages_hold_their_deltanet_layers_state_at_any_context() {
    let (hp, p) = qwen35_27b();
    assert_eq!(p.layers.len(), 64);
    // 149.6 MiB per sequence, as the plan doc has it.
    assert_eq!(state_of(0, 64), 48 * STATE_PER_LAYER * 4 * 2);
    assert_eq!(48 * STATE_PER_LAYER * 10 / (1 << 20), 1496);
    let workers = gpus(&[16 * GIB, 16 * GIB, 12 * GIB]);
    for ctx in [4096, 16384] {
        let req = request(&hp, &p, ctx);
        let plan = plan(&req, &workers).expect("fits");
        check(&plan, &req, &workers);
        assert!(plan.stages.len() >= 2, "{} stages", plan.stages.len());
        for s in &plan.stages {
            assert_eq!(s.state_bytes, state_of(s.first_layer, s.end_layer));
        }
        let total: u64 = plan.stages.iter().map(|s| s.state_bytes).sum();
        assert_eq!(total, state_of(0, 64), "ctx {ctx}");
    }
}

#[test]
fn qwen35_27b_room_for_weights_and_kv_but_not_the_state_is_refused() {
    let (hp, p) = qwen35_27b();
    // No safety margin, so a worker's usable memory is its free memory.
    let no_margin = SafetyMargin {
        fraction: 0.0,
        fixed_gpu_bytes: 0,
        fixed_cpu_bytes: 0,
    };
    let req = PlanRequest {
        margin: no_margin,
        ..request(&hp, &p, 4096)
    };
    // The same model as if DeltaNet layers held nothing (what the planner
    // counted before state was).
    let mut stateless = req.clone();
    for l in &mut stateless.profile.layers {
        l.state_bytes_per_seq = 0;
    }
    let fits =
        |r: &PlanRequest, free: u64| matches!(try_plan(r, &gpus(&[free, free])), Ok(Some(_)));
    // The least free memory per worker at which two equal workers hold
    // weights, KV and scratch.
    let (mut lo, mut hi) = (0u64, 64 * GIB);
    assert!(fits(&stateless, hi) && !fits(&stateless, lo));
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(&stateless, mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let just_enough = hi;

    // With the state counted, that is not enough: every stage holds
    // DeltaNet layers, so every placement needs more.
    let workers = gpus(&[just_enough, just_enough]);
    match plan(&req, &workers) {
        Err(PlanError::DoesNotFit(e)) => {
            assert_eq!(e.state_bytes, state_of(0, 64));
            assert!(e.to_string().contains("recurrent state"), "{e}");
        }
        other => panic!("placed without room for the state: {other:?}"),
    }
    // Room for all of the state on each worker: it fits, and each stage
    // counts its own layers' state.
    let roomy = gpus(&[just_enough + state_of(0, 64), just_enough + state_of(0, 64)]);
    let plan = plan(&req, &roomy).expect("fits with room for the state");
    check(&plan, &req, &roomy);
    for s in &plan.stages {
        assert_eq!(s.state_bytes, state_of(s.first_layer, s.end_layer));
        assert!(s.total_bytes() <= just_enough + state_of(0, 64));
    }
}
