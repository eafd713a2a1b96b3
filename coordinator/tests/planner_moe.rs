//! Placement of mixture-of-experts models (synthetic shapes, no tensor data)
//! and of models that fit one device.

use strata_coordinator::planner::{plan, Backend, Link, PlanRequest, WorkerSpec};
use strata_model::arch::Architecture;
use strata_model::profile::KvType;

mod common;
use common::*;

#[test]
fn qwen3moe_30b_a3b_reads_a_tenth_of_its_weights_and_splits_over_two_12gib() {
    let (spec, p) = synth(Architecture::Qwen3Moe, "30b-a3b", "Q4_K_M");
    assert!(p.is_moe());
    assert_eq!((p.expert_count, p.expert_used_count), (128, 8));
    let total = p.total_weight_bytes();
    assert!(total > 15 * GIB && total < 20 * GIB, "{total}");
    // 3B of 30B parameters active: a token reads far less than the file.
    let active = p.active_bytes_per_token();
    assert!(active * 6 < total, "active {active} of {total}");

    let req = PlanRequest::new(p.clone(), spec.d_model, 4096, KvType::F16);
    let workers = gpus(&[12 * GIB, 12 * GIB]);
    let plan = plan(&req, &workers).expect("fits on two 12 GiB");
    assert_eq!(plan.stages.len(), 2);
    check(&plan, &req, &workers);

    // On one 24 GiB device it stays on one.
    let big = gpus(&[24 * GIB, 24 * GIB]);
    let one = plan_on(&req, &big);
    assert_eq!(
        one.stages.len(),
        1,
        "a model that fits one device stays on one"
    );
    check(&one, &req, &big);
}

fn plan_on(req: &PlanRequest, w: &[WorkerSpec]) -> strata_coordinator::planner::Plan {
    plan(req, w).expect("fits")
}

#[test]
fn gpt_oss_120b_mxfp4_over_16_16_12_and_more() {
    let (spec, p) = synth(Architecture::GptOss, "120b", "MXFP4");
    assert!(p.is_moe());
    let req = PlanRequest::new(p.clone(), spec.d_model, 4096, KvType::F16);
    let workers = gpus(&[16 * GIB, 16 * GIB, 12 * GIB, 12 * GIB, 12 * GIB]);
    let plan = plan_on(&req, &workers);
    assert!(plan.stages.len() >= 4, "{} stages", plan.stages.len());
    check(&plan, &req, &workers);
}

#[test]
fn decode_time_follows_active_bytes_not_file_size() {
    let (spec, p) = synth(Architecture::Qwen3Moe, "30b-a3b", "Q4_K_M");
    let req = PlanRequest::new(p.clone(), spec.d_model, 4096, KvType::F16);
    let w = vec![WorkerSpec::new("w", Backend::Cuda, "h", 48 * GIB).with_bandwidth(1e12)];
    let moe = plan_on(&req, &w);
    let s = &moe.stages[0];
    // Compute, and the coordinator's hop there and back.
    let want = (p.active_bytes_per_token() + s.read_kv_bytes_per_token) as f64 / 1e12
        + 2.0 * Link::DEFAULT_NETWORK.latency_s;
    assert!((moe.est_time_per_token_s - want).abs() < 1e-12 * want.max(1.0));
    assert!(moe.est_time_per_token_s * 5.0 < p.total_weight_bytes() as f64 / 1e12);
}

#[test]
fn dense_models_that_fit_one_device_stay_on_one() {
    for (arch, preset) in [
        (Architecture::Llama, "8b"),
        (Architecture::Qwen3, "8b"),
        (Architecture::Gemma3, "4b"),
    ] {
        let (spec, p) = synth(arch, preset, "Q4_K_M");
        let req = PlanRequest::new(p, spec.d_model, 4096, KvType::F16);
        // Unknown speeds, one fast device among slow ones, one host.
        let cases = [
            gpus(&[16 * GIB, 16 * GIB, 12 * GIB]),
            gpus(&[16 * GIB, 16 * GIB, 12 * GIB])
                .into_iter()
                .enumerate()
                .map(|(i, w)| w.with_bandwidth(if i == 2 { 9e11 } else { 3e11 }))
                .collect(),
            gpus(&[16 * GIB, 16 * GIB])
                .into_iter()
                .map(|mut w| {
                    w.host = "box".into();
                    w.with_link(Link::SAME_HOST)
                })
                .collect(),
        ];
        for (i, workers) in cases.iter().enumerate() {
            let plan = plan_on(&req, workers);
            assert_eq!(plan.stages.len(), 1, "{arch} {preset}, case {i}");
            check(&plan, &req, workers);
        }
        // With speeds known, the fastest device holds it.
        assert_eq!(plan_on(&req, &cases[1]).stages[0].worker, 2);
    }
}
