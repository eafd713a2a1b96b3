//! The planner's DP against brute force over every ordered subset of workers
//! and every contiguous split, on small random profiles (seeded).

use strata_coordinator::planner::noise::{steady_bandwidths, steady_links};
use strata_coordinator::planner::{try_plan, Backend, Link, PlanRequest, SafetyMargin, WorkerSpec};
use strata_model::profile::{KvType, LayerProfile, MemoryProfile};

mod common;
use common::{Rng, MIB};

fn hop(a: &WorkerSpec, b: &WorkerSpec, bytes: u64) -> f64 {
    let l = if a.host == b.host {
        Link::SAME_HOST
    } else if let Some(l) = a.peer_links.get(&b.name) {
        *l
    } else {
        Link {
            latency_s: a.link.latency_s.max(b.link.latency_s),
            bandwidth_bytes_per_s: a
                .link
                .bandwidth_bytes_per_s
                .min(b.link.bandwidth_bytes_per_s),
        }
    };
    l.transfer_s(bytes)
}

/// Best time over all placements by enumeration, `None` if nothing fits.
fn brute_force(req: &PlanRequest, workers: &[WorkerSpec]) -> Option<f64> {
    let p = &req.profile;
    let n = p.layers.len();
    // Every layer holds the whole pool: each sequence in whole 32-token
    // blocks; a sliding layer two rings per sequence (its own and the
    // prefix cache's snapshot) of its window beside a batch (window + batch
    // - 1 positions in whole blocks), at most the pool.
    let pool_tokens = (req.ctx_size.div_ceil(32) * 32 * req.parallel) as u64;
    let scratch_tokens = (req.max_batch_tokens as u64).min(pool_tokens);
    let held_tokens = |window: Option<usize>| match window {
        Some(w) => {
            let ring = (w + req.max_batch_tokens - 1).div_ceil(32) * 32;
            ((ring * req.parallel * 2) as u64).min(pool_tokens)
        }
        None => pool_tokens,
    };
    let stage_mem = |a: usize, b: usize| {
        let l = &p.layers[a..b];
        l.iter()
            .map(|x| {
                x.weight_bytes
                    + x.kv_bytes_per_token(req.kv_type) * held_tokens(x.kv_window_tokens)
                    + x.state_bytes_per_seq * req.parallel as u64
            })
            .sum::<u64>()
            + if a == 0 { p.embedding_bytes } else { 0 }
            + if b == n {
                p.head_bytes + p.logits_bytes * req.parallel as u64
            } else {
                0
            }
            + p.scratch_bytes_per_token * scratch_tokens
    };
    // A token reads the active weights (routed experts only) and the KV of
    // its context (a sliding layer its window).
    let stage_read = |a: usize, b: usize| {
        p.layers[a..b]
            .iter()
            .map(|x| x.active_bytes_per_token + x.kv_read_bytes(req.kv_type, req.ctx_size))
            .sum::<u64>()
            + if b == n { p.head_bytes } else { 0 }
    };
    // The speeds the planner plans at: measured ones steadied against noise
    // (planner/noise.rs); the DP is exact for those.
    let steady = steady_bandwidths(workers);
    let mut best: Option<f64> = None;
    // Depth-first over (layers placed, last worker, used mask, time so far).
    let mut stack = vec![(0usize, None::<usize>, 0u32, 0.0f64)];
    while let Some((l, last, used, t)) = stack.pop() {
        if l == n {
            // The last stage's reply to the coordinator.
            let t = t + last.map_or(0.0, |q| workers[q].link.latency_s);
            if best.is_none_or(|b| t < b) {
                best = Some(t);
            }
            continue;
        }
        for (wi, w) in workers.iter().enumerate() {
            if used & (1 << wi) != 0 {
                continue;
            }
            // From the coordinator (token ids) or the previous stage.
            let h = last.map_or(w.link.latency_s, |q| {
                hop(&workers[q], w, req.activation_bytes_per_token)
            });
            for b in l + 1..=n {
                if stage_mem(l, b) > req.margin.usable_bytes(w) {
                    continue;
                }
                stack.push((
                    b,
                    Some(wi),
                    used | (1 << wi),
                    t + h + stage_read(l, b) as f64 / steady[wi],
                ));
            }
        }
    }
    best
}

#[test]
fn dp_matches_brute_force() {
    let seed = 0xC0FFEE_u64;
    let mut rng = Rng(seed);
    let mut fitted = 0;
    for round in 0..200 {
        let n = 2 + rng.below(7) as usize;
        let moe = rng.below(2) == 0;
        // Some models hybrid: 3 of 4 layers recurrent (state, no KV).
        let hybrid = rng.below(2) == 0;
        let layers = (0..n)
            .map(|il| {
                // Some layers mixture-of-experts: 2 of 8 experts read.
                let dense = (50 + rng.below(200)) * MIB;
                let experts = if moe { (20 + rng.below(200)) * MIB } else { 0 };
                let recurrent = hybrid && il % 4 != 3;
                LayerProfile {
                    weight_bytes: dense + experts,
                    expert_bytes: experts,
                    active_bytes_per_token: dense + experts / 4,
                    kv_bytes_per_token_f16: if recurrent { 0 } else { 2048 },
                    kv_bytes_per_token_q8_0: if recurrent { 0 } else { 1088 },
                    kv_bytes_per_token_q4_0: if recurrent { 0 } else { 576 },
                    kv_window_tokens: if rng.below(3) == 0 { Some(512) } else { None },
                    state_bytes_per_seq: if recurrent {
                        (1 + rng.below(40)) * MIB
                    } else {
                        0
                    },
                }
            })
            .collect();
        let tied = rng.below(2) == 0;
        let embedding = (20 + rng.below(100)) * MIB;
        let profile = MemoryProfile {
            layers,
            embedding_bytes: embedding,
            embedding_on_every_stage: false,
            no_cut_before: Vec::new(),
            head_bytes: if tied {
                embedding
            } else {
                (20 + rng.below(150)) * MIB
            },
            mtp_bytes: 0,
            tied_embeddings: tied,
            scratch_bytes_per_token: 4096,
            logits_bytes: 4 * 32000,
            expert_count: if moe { 8 } else { 0 },
            expert_used_count: if moe { 2 } else { 0 },
        };
        let req = PlanRequest {
            margin: SafetyMargin {
                fraction: 0.05,
                fixed_gpu_bytes: 32 * MIB,
                fixed_cpu_bytes: 8 * MIB,
            },
            parallel: 1 + rng.below(2) as usize,
            ..PlanRequest::new(
                profile,
                2048,
                256 * (1 + rng.below(16) as usize),
                KvType::F16,
            )
        };
        let m = 1 + rng.below(4) as usize;
        let mut workers: Vec<WorkerSpec> = (0..m)
            .map(|i| {
                let link = Link {
                    latency_s: rng.below(1000) as f64 * 1e-6,
                    bandwidth_bytes_per_s: 1e8 + rng.below(100) as f64 * 1e8,
                };
                WorkerSpec::new(
                    format!("w{i}"),
                    if rng.below(4) == 0 {
                        Backend::Cpu
                    } else {
                        Backend::Cuda
                    },
                    format!("h{i}"),
                    (100 + rng.below(900)) * MIB,
                )
                .with_bandwidth(1e10 + rng.below(100) as f64 * 1e10)
                .with_link(link)
            })
            .collect();
        // Some pairs measured worker to worker, one way or both.
        for i in 0..m {
            for j in 0..m {
                if i != j && rng.below(2) == 0 {
                    let link = Link {
                        latency_s: rng.below(1000) as f64 * 1e-6,
                        bandwidth_bytes_per_s: 1e8 + rng.below(100) as f64 * 1e8,
                    };
                    workers[i].peer_links.insert(format!("w{j}"), link);
                }
            }
        }
        // Links as the planner plans on them (noise.rs), as for speeds.
        let want = brute_force(&req, &steady_links(&workers));
        let got = try_plan(&req, &workers).unwrap();
        match (want, &got) {
            (None, None) => {}
            (Some(t), Some(p)) => {
                fitted += 1;
                let rel = (p.est_time_per_token_s - t).abs() / t;
                assert!(
                    rel < 1e-6,
                    "seed {seed:#x} round {round}: dp {} vs brute force {t}",
                    p.est_time_per_token_s
                );
            }
            _ => panic!(
                "seed {seed:#x} round {round}: brute force {want:?}, dp {:?}",
                got.map(|p| p.est_time_per_token_s)
            ),
        }
    }
    assert!(
        fitted > 50,
        "only {fitted} rounds fitted; the test would say little"
    );
}
