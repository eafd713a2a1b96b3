//! Placement planner over real and synthetic model shapes (pure: no sockets,
//! no tensor data loaded).

use std::collections::BTreeMap;
use strata_coordinator::planner::{
    plan, try_plan, Backend, Link, Plan, PlanError, PlanRequest, WorkerSpec,
};
use strata_model::arch::{Architecture, ModelSpec};
use strata_model::profile::{KvType, MemoryProfile};

mod common;
use common::*;

fn request(hp: &ModelSpec, p: &MemoryProfile, ctx: usize, kv: KvType) -> PlanRequest {
    PlanRequest::new(p.clone(), hp.d_model, ctx, kv)
}

fn fits(req: &PlanRequest, workers: &[WorkerSpec]) -> bool {
    try_plan(req, workers).unwrap().is_some()
}

#[test]
fn smollm2_135m_fits_on_one_worker_and_skips_the_rest() {
    let (hp, p) = real("SmolLM2-135M-Instruct.Q4_1.gguf");
    let req = request(&hp, &p, 4096, KvType::F16);
    let workers = gpus(&[16 * GIB, 16 * GIB, 12 * GIB]);
    let plan = plan(&req, &workers).unwrap();
    check(&plan, &req, &workers);
    assert_eq!(
        plan.stages.len(),
        1,
        "a hop costs time; one worker holds it all"
    );
    assert!(p.tied_embeddings && plan.stages[0].weight_bytes >= p.embedding_bytes * 2);
}

/// Gemma 4 E2B: layers 15-34 read the KV of layers 13 and 14, so however
/// small the devices, the last stage starts at layer 13 or before; every
/// stage holds the embedding (each makes its layers' per-layer inputs).
#[test]
fn gemma4_e2b_keeps_shared_kv_layers_with_their_source() {
    let (hp, p) = synth(Architecture::Gemma4, "e2b", "Q4_K_M");
    assert_eq!(p.no_cut_before, (14..35).collect::<Vec<_>>());
    let req = request(&hp, &p, 8192, KvType::F16);
    let last_stage = |sizes: &[u64]| {
        let workers = gpus(sizes);
        let plan = plan(&req, &workers).unwrap();
        check(&plan, &req, &workers);
        for s in &plan.stages {
            assert!(s.weight_bytes >= p.embedding_bytes, "{s:?}");
        }
        plan.stages.last().unwrap().first_layer
    };
    // Two cards, the smaller first: without the rule the cut would fall
    // near the middle, past layer 14.
    assert_eq!(last_stage(&[2 * GIB, 5 * GIB / 2]), 13);
    // Three 2 GiB cards hold the model in total, but not layers 13-34 with
    // the head: the planner says so.
    let workers = gpus(&[2 * GIB; 3]);
    let e = plan(&req, &workers).unwrap_err().to_string();
    assert!(e.contains("run of layers that share KV"), "{e}");
}

#[test]
fn gemma3_270m_sliding_layers_hold_a_ring_of_their_window() {
    let (hp, p) = real("gemma-3-270m-q4_k_m.gguf");
    let workers = gpus(&[2 * GIB, GIB, GIB / 2]);
    let short = request(&hp, &p, 512, KvType::F16);
    let long = request(&hp, &p, 32768, KvType::F16);
    let (a, b) = (
        plan(&short, &workers).unwrap(),
        plan(&long, &workers).unwrap(),
    );
    check(&a, &short, &workers);
    check(&b, &long, &workers);
    let kv = |p: &Plan| p.stages.iter().map(|s| s.kv_bytes).sum::<u64>();
    let global_layers = p
        .layers
        .iter()
        .filter(|l| l.kv_window_tokens.is_none())
        .count() as u64;
    assert!(global_layers > 0 && global_layers < p.layers.len() as u64);
    // Only the global layers grow with the context: a sliding layer holds
    // two rings (its own and the prefix cache's snapshot) of its window
    // beside a batch (512 + 512 - 1 positions, 32 blocks each) once the
    // context is past them.
    let per_token = |window: bool| -> u64 {
        p.layers
            .iter()
            .filter(|l| l.kv_window_tokens.is_some() == window)
            .map(|l| l.kv_bytes_per_token(KvType::F16))
            .sum()
    };
    assert_eq!(short.max_batch_tokens, 512);
    assert_eq!(
        kv(&b) - kv(&a),
        per_token(false) * (32768 - 512) + per_token(true) * (2 * 1024 - 512)
    );
    // What a token reads still stops at the window on sliding layers.
    let read = |p: &Plan| {
        p.stages
            .iter()
            .map(|s| s.read_kv_bytes_per_token)
            .sum::<u64>()
    };
    let global_per_token = p
        .layers
        .iter()
        .find(|l| l.kv_window_tokens.is_none())
        .unwrap()
        .kv_bytes_per_token(KvType::F16);
    assert_eq!(
        read(&b) - read(&a),
        global_layers * global_per_token * (32768 - 512)
    );
}

#[test]
fn llama_1b_on_small_uneven_budgets() {
    let (hp, p) = synth(Architecture::Llama, "1b", "Q4_K_M");
    let req = request(&hp, &p, 2048, KvType::F16);
    let workers = gpus(&[2 * GIB, GIB, GIB / 2]);
    let plan = plan(&req, &workers).unwrap();
    check(&plan, &req, &workers);
}

#[test]
fn llama_8b_split_by_memory_when_speeds_are_unknown() {
    let (hp, p) = synth(Architecture::Llama, "8b", "Q4_K_M");
    let req = request(&hp, &p, 4096, KvType::F16);
    // Too big for any two of these, so all three are needed.
    let workers = gpus(&[2 * GIB + GIB / 2, 2 * GIB + GIB / 2, 2 * GIB]);
    let plan = plan(&req, &workers).unwrap();
    check(&plan, &req, &workers);
    assert_eq!(plan.stages.len(), 3);
    assert!(!plan.bandwidth_measured);
    // Balanced by memory: every stage fills about the same share of its usable memory.
    let fill: Vec<f64> = plan
        .stages
        .iter()
        .map(|s| s.total_bytes() as f64 / req.margin.usable_bytes(&workers[s.worker]) as f64)
        .collect();
    let (lo, hi) = fill
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), &f| (lo.min(f), hi.max(f)));
    assert!(hi - lo < 0.15, "fills {fill:?}");
}

#[test]
fn forced_uneven_split_gives_the_small_worker_few_layers() {
    let (hp, p) = synth(Architecture::Llama, "8b", "Q4_K_M");
    let req = request(&hp, &p, 4096, KvType::F16);
    let workers = gpus(&[5 * GIB, 3 * GIB / 2]);
    let plan = plan(&req, &workers).unwrap();
    check(&plan, &req, &workers);
    assert_eq!(plan.stages.len(), 2);
    let small = plan.stages.iter().find(|s| s.worker == 1).unwrap();
    let big = plan.stages.iter().find(|s| s.worker == 0).unwrap();
    assert!(
        small.n_layers() * 3 < big.n_layers(),
        "{} vs {} layers",
        small.n_layers(),
        big.n_layers()
    );
}

#[test]
fn faster_worker_gets_more_layers() {
    let (hp, p) = synth(Architecture::Llama, "8b", "Q4_K_M");
    let req = request(&hp, &p, 4096, KvType::F16);
    for fast in 0..2 {
        let mut workers = gpus(&[4 * GIB, 4 * GIB]);
        workers[fast].matvec_bandwidth_bytes_per_s = Some(900e9);
        workers[1 - fast].matvec_bandwidth_bytes_per_s = Some(300e9);
        let plan = plan(&req, &workers).unwrap();
        check(&plan, &req, &workers);
        assert!(plan.bandwidth_measured);
        let layers = |w: usize| {
            plan.stages
                .iter()
                .find(|s| s.worker == w)
                .map_or(0, |s| s.n_layers())
        };
        assert!(
            layers(fast) > layers(1 - fast) + 8,
            "fast {} slow {}",
            layers(fast),
            layers(1 - fast)
        );
    }
}

#[test]
fn slow_network_prefers_fewer_stages() {
    let (hp, p) = synth(Architecture::Llama, "8b", "Q4_K_M");
    let req = request(&hp, &p, 4096, KvType::F16);
    // One fast GPU that holds it all, one slightly faster over a slow link.
    let slow = Link {
        latency_s: 0.05,
        bandwidth_bytes_per_s: 1e6,
    };
    let workers = vec![
        WorkerSpec::new("a", Backend::Cuda, "h1", 16 * GIB)
            .with_bandwidth(800e9)
            .with_link(slow),
        WorkerSpec::new("b", Backend::Cuda, "h2", 16 * GIB)
            .with_bandwidth(900e9)
            .with_link(slow),
    ];
    let plan = plan(&req, &workers).unwrap();
    check(&plan, &req, &workers);
    assert_eq!(plan.stages.len(), 1);
}

const QUICK: Link = Link {
    latency_s: 100e-6,
    bandwidth_bytes_per_s: 110e6,
};
const SLOW: Link = Link {
    latency_s: 2e-3,
    bandwidth_bytes_per_s: 110e6,
};

/// Worker 0 holds about two thirds of an 8B model, so a second stage is
/// needed; 1 and 2 can each take the rest at the same speed. `links(i)`
/// gives worker i's link to the coordinator and its measured peers.
/// Returns the workers the plan uses, in pipeline order.
fn two_thirds_and_the_rest(links: impl Fn(usize) -> (Link, BTreeMap<String, Link>)) -> Vec<usize> {
    let (hp, p) = synth(Architecture::Llama, "8b", "Q4_K_M");
    let req = request(&hp, &p, 4096, KvType::F16);
    let total = fits_total(&req);
    let workers: Vec<WorkerSpec> = (0..3)
        .map(|i| {
            let size = if i == 0 { total * 2 / 3 } else { total * 3 / 4 };
            let (link, peers) = links(i);
            WorkerSpec::new(format!("w{i}"), Backend::Cuda, format!("h{i}"), size)
                .with_bandwidth(900e9)
                .with_link(link)
                .with_peer_links(peers)
        })
        .collect();
    let plan = plan(&req, &workers).unwrap();
    check(&plan, &req, &workers);
    plan.stages.iter().map(|s| s.worker).collect()
}

#[test]
fn a_slow_link_moves_the_boundary_to_another_worker() {
    // A 2 ms link to the coordinator on either 1 or 2 sends the boundary to
    // the other.
    for slow_one in [1, 2] {
        let used = two_thirds_and_the_rest(|i| {
            (if i == slow_one { SLOW } else { QUICK }, BTreeMap::new())
        });
        assert_eq!(used.len(), 2, "two stages: {used:?}");
        assert!(
            !used.contains(&slow_one) && used.contains(&(3 - slow_one)),
            "the slow link on w{slow_one} should carry no hop: {used:?}"
        );
    }
}

#[test]
fn a_hop_costs_the_link_measured_between_its_two_workers() {
    // The coordinator sees all three alike; worker 0 and one of them
    // measured 100 us between them, every other pair 2 ms, so only the
    // measured pair can decide.
    for quick_one in [1usize, 2] {
        let mut used = two_thirds_and_the_rest(|i| {
            let peers = (0..3)
                .filter(|&j| j != i)
                .map(|j| {
                    let pair_is_quick = (i.min(j), i.max(j)) == (0, quick_one);
                    (format!("w{j}"), if pair_is_quick { QUICK } else { SLOW })
                })
                .collect();
            (QUICK, peers)
        });
        used.sort();
        assert_eq!(used, [0, quick_one], "w0 and the worker of its quick link");
    }
}

#[test]
fn a_worker_is_never_followed_by_one_it_cannot_connect_to() {
    // w0 holds two thirds of an 8B model, w1 and w2 the rest each; w2 is
    // 2 ms from the coordinator, so the quickest plans pair w0 and w1.
    let (hp, p) = synth(Architecture::Llama, "8b", "Q4_K_M");
    let req = request(&hp, &p, 4096, KvType::F16);
    let total = fits_total(&req);
    let pool = |cannot_reach: [&[&str]; 3]| -> Vec<WorkerSpec> {
        (0..3)
            .map(|i| {
                let size = if i == 0 { total * 2 / 3 } else { total * 3 / 4 };
                let link = if i == 2 { SLOW } else { QUICK };
                WorkerSpec::new(format!("w{i}"), Backend::Cuda, format!("h{i}"), size)
                    .with_bandwidth(900e9)
                    .with_link(link)
                    .with_unreachable(cannot_reach[i].iter().map(|n| n.to_string()))
            })
            .collect()
    };
    let hops = |workers: &[WorkerSpec]| {
        let plan = plan(&req, workers).unwrap();
        check(&plan, &req, workers);
        let names: Vec<&str> = plan
            .stages
            .iter()
            .map(|s| workers[s.worker].name.as_str())
            .collect();
        let hops: Vec<(String, String)> = names
            .windows(2)
            .map(|w| (w[0].to_string(), w[1].to_string()))
            .collect();
        (hops, plan.blocked_hops)
    };
    let hop = |a: &str, b: &str| (a.to_string(), b.to_string());

    let (open, blocked) = hops(&pool([&[], &[], &[]]));
    assert_eq!(blocked, 0);
    assert_eq!(open.len(), 1, "two stages: {open:?}");
    assert!(
        open[0] == hop("w0", "w1") || open[0] == hop("w1", "w0"),
        "{open:?}"
    );

    // Whichever way the quick pair ran, the way that cannot connect is
    // never taken while another plan exists.
    for (from, to) in [("w0", "w1"), ("w1", "w0")] {
        let mut cannot: [&[&str]; 3] = [&[], &[], &[]];
        let i: usize = from[1..].parse().unwrap();
        let blocked_to = [to];
        cannot[i] = &blocked_to;
        let (planned, blocked) = hops(&pool(cannot));
        assert_eq!(blocked, 0, "{planned:?}");
        assert!(
            !planned.contains(&hop(from, to)),
            "{from} cannot reach {to}: {planned:?}"
        );
    }
    // w0 reaches no one: it can only be the last stage.
    let (planned, blocked) = hops(&pool([&["w1", "w2"], &[], &[]]));
    assert_eq!(blocked, 0);
    assert!(planned.iter().all(|(a, _)| a != "w0"), "{planned:?}");

    // No worker reaches another: the model still needs two stages, so the
    // plan has one blocked hop and says so.
    let isolated = pool([&["w1", "w2"], &["w0", "w2"], &["w0", "w1"]]);
    let (planned, blocked) = hops(&isolated);
    assert_eq!((planned.len(), blocked), (1, 1), "{planned:?}");
    let shown = strata_coordinator::planner::table(&plan(&req, &isolated).unwrap(), &isolated);
    let (a, b) = &planned[0];
    let line = format!("blocked: stage 0 -> 1: {a} could not connect to {b} when asked");
    assert!(shown.contains(&line), "{shown}");
    // The open plans say nothing of blocked hops.
    let open_pool = pool([&[], &[], &[]]);
    let shown = strata_coordinator::planner::table(&plan(&req, &open_pool).unwrap(), &open_pool);
    assert!(!shown.contains("blocked"), "{shown}");
}

#[test]
fn workers_near_each_other_split_though_the_coordinator_is_far() {
    let (hp, p) = synth(Architecture::Llama, "8b", "Q4_K_M");
    let req = request(&hp, &p, 4096, KvType::F16);
    // A slow GPU that holds it all, and a fast one that holds two thirds;
    // the coordinator is 50 ms from both (a far laptop), the two are 100 us
    // apart. Charged by the coordinator's links the split does not pay;
    // charged by theirs, it does.
    let far = Link {
        latency_s: 0.05,
        bandwidth_bytes_per_s: 1e6,
    };
    let near = Link {
        latency_s: 100e-6,
        bandwidth_bytes_per_s: 110e6,
    };
    let total = fits_total(&req);
    let workers = |measured: bool| {
        let peer = |other: &str| {
            if measured {
                [(other.to_string(), near)].into()
            } else {
                Default::default()
            }
        };
        vec![
            WorkerSpec::new("slow", Backend::Cuda, "h1", total + GIB)
                .with_bandwidth(400e9)
                .with_link(far)
                .with_peer_links(peer("fast")),
            WorkerSpec::new("fast", Backend::Cuda, "h2", total * 2 / 3)
                .with_bandwidth(900e9)
                .with_link(far)
                .with_peer_links(peer("slow")),
        ]
    };
    let unmeasured = workers(false);
    let one = plan(&req, &unmeasured).unwrap();
    check(&one, &req, &unmeasured);
    assert_eq!(one.stages.len(), 1, "a 50 ms hop is not worth it");
    let measured = workers(true);
    let two = plan(&req, &measured).unwrap();
    check(&two, &req, &measured);
    assert_eq!(two.stages.len(), 2, "a 100 us hop is");
    assert!(two.est_time_per_token_s < one.est_time_per_token_s);
}

/// Bytes a single GPU needs for `req` (with the planner's margin).
fn fits_total(req: &PlanRequest) -> u64 {
    let mut size = GIB;
    while !fits(req, &[WorkerSpec::new("one", Backend::Cuda, "h", size)]) {
        size += GIB / 8;
    }
    size
}

#[test]
fn same_host_workers_stay_adjacent() {
    let (hp, p) = synth(Architecture::Llama, "8b", "Q4_K_M");
    let req = request(&hp, &p, 4096, KvType::F16);
    let hosts = ["h1", "h2", "h1", "h2"];
    let workers: Vec<WorkerSpec> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| WorkerSpec::new(format!("w{i}"), Backend::Cuda, *h, 2 * GIB))
        .collect();
    let plan = plan(&req, &workers).unwrap();
    check(&plan, &req, &workers);
    assert_eq!(plan.stages.len(), 4, "needs all four");
    let seq: Vec<&str> = plan
        .stages
        .iter()
        .map(|s| workers[s.worker].host.as_str())
        .collect();
    let changes = seq.windows(2).filter(|w| w[0] != w[1]).count();
    assert_eq!(changes, 1, "hosts {seq:?}");
}

#[test]
fn llama_70b_on_three_24gib_gpus() {
    let (hp, p) = synth(Architecture::Llama, "70b", "Q4_K_M");
    let req = request(&hp, &p, 4096, KvType::F16);
    let workers = gpus(&[24 * GIB, 24 * GIB, 24 * GIB]);
    let plan = plan(&req, &workers).unwrap();
    check(&plan, &req, &workers);
    assert!(plan.stages.len() >= 2);
}

#[test]
fn llama_70b_on_16_16_12_gib_explains_and_suggests() {
    let (hp, p) = synth(Architecture::Llama, "70b", "Q4_K_M");
    let req = request(&hp, &p, 4096, KvType::F16);
    let workers = gpus(&[16 * GIB, 16 * GIB, 12 * GIB]);
    match plan(&req, &workers) {
        Ok(plan) => check(&plan, &req, &workers),
        Err(PlanError::DoesNotFit(e)) => {
            let text = e.to_string();
            eprintln!("{text}");
            assert!(text.contains("does not fit"));
            verify_suggestions(&e, &req, &workers);
        }
        Err(e) => panic!("{e}"),
    }
}

fn verify_suggestions(
    e: &strata_coordinator::planner::DoesNotFit,
    req: &PlanRequest,
    workers: &[WorkerSpec],
) {
    let s = &e.suggestions;
    if let Some(c) = s.max_ctx_size {
        assert!(c < req.ctx_size);
        let at = |c| PlanRequest {
            ctx_size: c,
            ..req.clone()
        };
        let ok = plan(&at(c), workers).expect("suggested ctx fits");
        check(&ok, &at(c), workers);
        assert!(
            !fits(&at(c + 256), workers) || c + 256 >= req.ctx_size,
            "a larger step would fit too"
        );
    }
    if let Some(q8) = s.q8_0_kv_fits {
        assert_eq!(
            q8,
            fits(
                &PlanRequest {
                    kv_type: KvType::Q8_0,
                    ..req.clone()
                },
                workers
            )
        );
    }
    if let Some(c) = s.q8_0_max_ctx_size {
        assert!(fits(
            &PlanRequest {
                kv_type: KvType::Q8_0,
                ctx_size: c,
                ..req.clone()
            },
            workers
        ));
    }
    if let Some(x) = s.extra_worker_free_bytes {
        let with = |bytes| {
            let mut ws = workers.to_vec();
            ws.push(WorkerSpec::new("extra", Backend::Cuda, "extra", bytes));
            ws
        };
        let ws = with(x);
        check(
            &plan(req, &ws).expect("suggested extra worker makes it fit"),
            req,
            &ws,
        );
        assert!(!fits(req, &with(x - MIB)), "1 MiB less should not fit");
    }
}

#[test]
fn does_not_fit_reports_shortfall_and_verified_suggestions() {
    let (hp, p) = synth(Architecture::Llama, "8b", "Q4_K_M");
    let req = PlanRequest {
        parallel: 4,
        ..request(&hp, &p, 8192, KvType::F16)
    };
    let workers = gpus(&[4 * GIB, 4 * GIB]);
    let Err(PlanError::DoesNotFit(e)) = plan(&req, &workers) else {
        panic!("expected does-not-fit")
    };
    let text = e.to_string();
    eprintln!("{text}");
    assert!(e.short_by_bytes > 0);
    assert_eq!(e.short_by_bytes, e.needed_bytes - e.usable_bytes);
    assert!(text.contains("short by"), "{text}");
    assert!(text.contains("--ctx-size"), "{text}");
    assert!(e.suggestions.q8_0_kv_fits.is_some());
    assert!(e.suggestions.max_ctx_size.is_some());
    assert!(e.suggestions.max_parallel.is_some());
    verify_suggestions(&e, &req, &workers);
}

#[test]
fn q8_0_kv_suggested_when_it_is_enough() {
    let (hp, p) = synth(Architecture::Llama, "8b", "Q4_K_M");
    let f16 = request(&hp, &p, 32768, KvType::F16);
    // Find a budget between what q8_0 KV and f16 KV need.
    let q8 = PlanRequest {
        kv_type: KvType::Q8_0,
        ..f16.clone()
    };
    let mut size = 4 * GIB;
    while !fits(&q8, &gpus(&[size, size])) {
        size += 64 * MIB;
    }
    let workers = gpus(&[size, size]);
    let Err(PlanError::DoesNotFit(e)) = plan(&f16, &workers) else {
        panic!("f16 KV should not fit")
    };
    assert_eq!(e.suggestions.q8_0_kv_fits, Some(true));
    assert!(e
        .to_string()
        .contains("--cache-type-k q8_0 --cache-type-v q8_0 fits"));
    verify_suggestions(&e, &f16, &workers);
}

#[test]
fn fits_in_total_but_not_layer_by_layer() {
    let (hp, p) = synth(Architecture::Llama, "8b", "Q4_K_M");
    let req = request(&hp, &p, 4096, KvType::F16);
    // CPU workers (small fixed margin): the first stage alone (embedding,
    // one layer, scratch) is bigger than any of them.
    let workers: Vec<WorkerSpec> = (0..24)
        .map(|i| WorkerSpec::new(format!("c{i}"), Backend::Cpu, format!("h{i}"), 450 * MIB))
        .collect();
    let Err(PlanError::DoesNotFit(e)) = plan(&req, &workers) else {
        panic!("expected does-not-fit")
    };
    assert_eq!(e.short_by_bytes, 0);
    assert!(e.to_string().contains("not layer by layer"), "{e}");
}

#[test]
fn cpu_and_gpu_margins_differ() {
    let m = strata_coordinator::planner::SafetyMargin::default();
    let gpu = WorkerSpec::new("g", Backend::Cuda, "h", 10 * GIB);
    let cpu = WorkerSpec::new("c", Backend::Cpu, "h", 10 * GIB);
    assert_eq!(m.reserved_bytes(&gpu), GIB / 2 + 256 * MIB);
    assert!(m.usable_bytes(&cpu) > m.usable_bytes(&gpu));
}

#[test]
fn bad_requests_are_errors() {
    let (hp, p) = synth(Architecture::Llama, "tiny", "Q4_K_M");
    let req = request(&hp, &p, 0, KvType::F16);
    assert!(matches!(
        plan(&req, &gpus(&[GIB])),
        Err(PlanError::Invalid(_))
    ));
    let req = request(&hp, &p, 128, KvType::F16);
    assert!(matches!(plan(&req, &[]), Err(PlanError::NoWorkers)));
}

/// Seeded random budgets over several shapes: a plan always satisfies every
/// invariant, and "does not fit" is only said when no single stage could
/// hold... at least when the total is short or a layer is too big somewhere.
#[test]
fn random_budgets_never_exceed_memory() {
    let shapes = [
        (Architecture::Llama, "1b"),
        (Architecture::Gemma3, "1b"),
        (Architecture::Qwen2, "7b"),
    ];
    let seed: u64 = 0x5eed_1234;
    let mut state = seed;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (arch, preset) in shapes {
        let (hp, p) = synth(arch, preset, "Q4_K_M");
        for round in 0..12 {
            let n = 1 + (next() % 4) as usize;
            let sizes: Vec<u64> = (0..n).map(|_| 256 * MIB + next() % (6 * GIB)).collect();
            let mut workers = gpus(&sizes);
            for w in &mut workers {
                if next() % 2 == 0 {
                    w.matvec_bandwidth_bytes_per_s = Some(1e11 + (next() % 900) as f64 * 1e9);
                }
                w.host = format!("h{}", next() % 2);
            }
            let ctx = 256 * (1 + (next() % 64) as usize);
            let req = request(
                &hp,
                &p,
                ctx,
                if next() % 2 == 0 {
                    KvType::F16
                } else {
                    KvType::Q8_0
                },
            );
            match plan(&req, &workers) {
                Ok(pl) => check(&pl, &req, &workers),
                Err(PlanError::DoesNotFit(e)) => verify_suggestions(&e, &req, &workers),
                Err(e) => panic!("seed {seed:#x} {arch} {preset} round {round}: {e}"),
            }
        }
    }
}

#[test]
fn workers_within_a_host_are_reordered_when_only_that_fits() {
    let (hp, p) = synth(Architecture::Llama, "8b", "Q4_K_M");
    let req = request(&hp, &p, 4096, KvType::F16);
    let min_stage = |with_emb: bool, with_head: bool| {
        let l = &p.layers[0];
        l.weight_bytes
            + l.kv_bytes_per_token(KvType::F16) * 4096
            + p.scratch_bytes_per_token * req.max_batch_tokens as u64
            + if with_emb { p.embedding_bytes } else { 0 }
            + if with_head {
                p.head_bytes + p.logits_bytes
            } else {
                0
            }
    };
    // The small GPU can hold the first stage (embedding + a layer) but not
    // the last (head + a layer); the big one cannot hold everything.
    let (first, last) = (min_stage(true, false), min_stage(false, true));
    assert!(first < last);
    let small_usable = (first + last) / 2;
    let small_free = ((small_usable + 256 * MIB) as f64 / 0.95) as u64 + 1;
    let total = p.total_weight_bytes()
        + p.layers
            .iter()
            .map(|l| l.kv_bytes_per_token(KvType::F16) * 4096)
            .sum::<u64>();
    let big_free = ((total + 256 * MIB) as f64 / 0.95) as u64 - 256 * MIB;
    let workers = vec![
        WorkerSpec::new("big", Backend::Cuda, "box", big_free),
        WorkerSpec::new("small", Backend::Cuda, "box", small_free),
    ];
    let plan = plan(&req, &workers).expect("small first, big last fits");
    check(&plan, &req, &workers);
    assert_eq!(
        plan.stages.iter().map(|s| s.worker).collect::<Vec<_>>(),
        vec![1, 0]
    );
}
