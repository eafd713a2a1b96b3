//! Placement across restarts: a pool restarted with nothing real changed
//! gets the same placement, though every worker measures its speed and
//! reads its free memory again (a little differently each time) and the
//! pool may list the workers in another order. Otherwise a worker's prefix
//! blocks on disk (`--kv-cache-dir`, per layer) are for layers it no longer
//! holds.

use strata_coordinator::planner::noise::{MEMORY_NOISE, SPEED_NOISE};
use strata_coordinator::planner::{plan, Backend, Link, PlanRequest, WorkerSpec};
use strata_model::arch::Architecture;
use strata_model::profile::KvType;

mod common;
use common::*;

/// `(worker name, first layer, end layer)` of each stage.
fn placement(req: &PlanRequest, workers: &[WorkerSpec]) -> Vec<(String, usize, usize)> {
    let p = plan(req, workers).expect("the pool holds the model");
    check(&p, req, workers);
    p.stages
        .iter()
        .map(|s| (workers[s.worker].name.clone(), s.first_layer, s.end_layer))
        .collect()
}

/// Plans `pool` as measured at many restarts: each speed scaled by up to
/// `speed_jitter` either way, each free memory by up to `memory_jitter`,
/// the list shuffled. Every placement must be the first one.
fn same_placement_at_every_restart(
    req: &PlanRequest,
    pool: &[WorkerSpec],
    speed_jitter: f64,
    memory_jitter: f64,
    want_stages: usize,
) {
    let seed = 0x5eed_5ab1_e000_u64;
    let mut rng = Rng(seed);
    // Links draw from their own sequence: memory near a stage's edge must
    // see the same draws with links as without.
    let mut link_rng = Rng(seed ^ 0x11_4c);
    let first = placement(req, pool);
    assert_eq!(first.len(), want_stages, "the pool's placement: {first:?}");
    for restart in 0..200 {
        let mut workers: Vec<WorkerSpec> = pool
            .iter()
            .map(|w| {
                let mut w = w.clone();
                let speed = w.matvec_bandwidth_bytes_per_s.unwrap();
                w.matvec_bandwidth_bytes_per_s =
                    Some(speed * (1.0 + speed_jitter * rng.signed_unit()));
                w.free_bytes =
                    (w.free_bytes as f64 * (1.0 + memory_jitter * rng.signed_unit())) as u64;
                // Links as a LAN's read at two starts: 275 to 350 us for 300,
                // a bandwidth step of the probe either way, each direction on
                // its own.
                let mut jitter_link = |l: &mut Link| {
                    let steps = (link_rng.signed_unit() * 2.0).round();
                    l.latency_s = (l.latency_s + steps * 25e-6).max(25e-6);
                    if link_rng.signed_unit() > 0.0 {
                        l.bandwidth_bytes_per_s /= std::f64::consts::SQRT_2;
                    }
                };
                jitter_link(&mut w.link);
                w.peer_links.values_mut().for_each(&mut jitter_link);
                w
            })
            .collect();
        rng.shuffle(&mut workers);
        assert_eq!(
            placement(req, &workers),
            first,
            "seed {seed:#x}, restart {restart}: {workers:?}"
        );
    }
}

/// Largest symmetric jitter whose extremes stay within `band` of each other.
fn jitter_within(band: f64) -> f64 {
    // (1 - j) >= (1 + j) * (1 - band)
    band / (2.0 - band) * 0.99
}

fn llama_8b() -> PlanRequest {
    let (hp, p) = synth(Architecture::Llama, "8b", "Q4_K_M");
    PlanRequest::new(p, hp.d_model, 4096, KvType::F16)
}

/// `strata serve` and three CPU workers on one machine: the same hardware,
/// so any difference in measured speed is noise, however large.
#[test]
fn three_cpu_workers_of_one_machine_keep_their_layers() {
    let req = llama_8b();
    let pool: Vec<WorkerSpec> = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]
        .iter()
        .map(|addr| {
            WorkerSpec::new(*addr, Backend::Cpu, "127.0.0.1", 2500 * MIB)
                .with_bandwidth(20e9)
                .with_hardware("cpu EPYC x8")
        })
        .collect();
    same_placement_at_every_restart(&req, &pool, 0.4, jitter_within(MEMORY_NOISE), 3);
    // Roomy workers: one holds it all, and it is the same one each time.
    let roomy: Vec<WorkerSpec> = pool
        .iter()
        .map(|w| WorkerSpec {
            free_bytes: 64 * GIB,
            ..w.clone()
        })
        .collect();
    same_placement_at_every_restart(&req, &roomy, 0.4, jitter_within(MEMORY_NOISE), 1);
}

/// Equal GPUs on three hosts of one LAN: speeds that differ within the
/// noise band count as one speed, links that differ by the probe's jitter
/// (each way measured apart) as one link.
#[test]
fn equal_workers_on_three_hosts_keep_their_layers() {
    let req = llama_8b();
    let lan = Link {
        latency_s: 300e-6,
        bandwidth_bytes_per_s: 759e6 / 8.0,
    };
    let pool: Vec<WorkerSpec> = (0..3)
        .map(|i| {
            let peers = (0..3)
                .filter(|&j| j != i)
                .map(|j| (format!("10.0.0.{j}:7000"), lan))
                .collect();
            WorkerSpec::new(
                format!("10.0.0.{i}:7000"),
                Backend::Cuda,
                format!("10.0.0.{i}"),
                2500 * MIB,
            )
            .with_bandwidth(800e9)
            .with_link(lan)
            .with_peer_links(peers)
        })
        .collect();
    same_placement_at_every_restart(
        &req,
        &pool,
        jitter_within(SPEED_NOISE),
        jitter_within(MEMORY_NOISE),
        3,
    );
}

/// A real difference in speed still counts: the faster device holds the
/// model.
#[test]
fn a_clearly_faster_worker_still_wins() {
    let req = llama_8b();
    let workers = vec![
        WorkerSpec::new("a", Backend::Cuda, "h1", 16 * GIB).with_bandwidth(500e9),
        WorkerSpec::new("b", Backend::Cuda, "h2", 16 * GIB).with_bandwidth(800e9),
    ];
    assert_eq!(
        placement(&req, &workers),
        vec![("b".into(), 0, req.n_layers())]
    );
}

/// Workers that came back on other addresses (so in another stable order)
/// with the KV of their old layers on disk: of the equal plans, each gets
/// the layers it saved, whichever way round they are; also where there are
/// too many workers on one host for the planner to try every order.
#[test]
fn each_worker_gets_back_the_layers_it_saved() {
    let req = llama_8b();
    for (n, budget) in [(3usize, 2500 * MIB), (7, 1100 * MIB)] {
        let pool: Vec<WorkerSpec> = (0..n)
            .map(|i| {
                WorkerSpec::new(
                    format!("127.0.0.1:70{i:02}"),
                    Backend::Cpu,
                    "127.0.0.1",
                    budget,
                )
                .with_bandwidth(20e9)
                .with_hardware("cpu EPYC x8")
            })
            .collect();
        let first = placement(&req, &pool);
        assert_eq!(first.len(), n, "{first:?}");
        for shift in 1..n {
            let saved: Vec<WorkerSpec> = pool
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    let (_, a, b) = first[(i + shift) % n];
                    w.clone().with_saved_layers(a..b)
                })
                .collect();
            let got = placement(&req, &saved);
            for (name, a, b) in &got {
                let w = saved.iter().find(|w| &w.name == name).unwrap();
                assert!(
                    (*a..*b).all(|l| w.saved_layers.contains(&l)),
                    "{n} workers, shift {shift}: {name} got {a}..{b}, saved {:?}",
                    w.saved_layers
                );
            }
        }
    }
}
