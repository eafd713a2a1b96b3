//! What the planner tests share: model shapes (synthetic, or the real test
//! models), GPU workers, and everything a plan must satisfy.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;

use strata_coordinator::planner::synth_profile::synth_profile;
use strata_coordinator::planner::{Backend, Plan, PlanRequest, WorkerSpec};
use strata_model::arch::{Architecture, ModelSpec};
use strata_model::profile::MemoryProfile;
use strata_model::synth::{QuantScheme, SynthSpec};
use strata_model::{GgufFile, LayerRange};

pub const GIB: u64 = 1 << 30;
pub const MIB: u64 = 1 << 20;

/// A `strata synth` preset's shapes, without writing its data.
pub fn synth(arch: Architecture, preset: &str, quant: &str) -> (ModelSpec, MemoryProfile) {
    let q = QuantScheme::parse(quant).expect("quant");
    let spec = SynthSpec::from_preset(arch, preset, q).expect("preset");
    synth_profile(&spec).expect("synth profile")
}

/// A real test model's shapes; panics with the fix when it is missing.
pub fn real(name: &str) -> (ModelSpec, MemoryProfile) {
    let dir = std::env::var("STRATA_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/strata/models")
        });
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-models.sh",
        path.display()
    );
    let f = GgufFile::open(&path).expect("open model");
    let hp = ModelSpec::from_gguf(&f).expect("hyper-parameters");
    let p = MemoryProfile::from_gguf(&f, &hp);
    (hp, p)
}

pub fn gpus(sizes: &[u64]) -> Vec<WorkerSpec> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &s)| WorkerSpec::new(format!("w{i}"), Backend::Cuda, format!("host{i}"), s))
        .collect()
}

/// Everything a plan must satisfy.
pub fn check(p: &Plan, req: &PlanRequest, workers: &[WorkerSpec]) {
    let n = req.n_layers();
    assert!(!p.stages.is_empty());
    assert_eq!(p.stages[0].first_layer, 0, "layers start at 0");
    assert_eq!(p.stages.last().unwrap().end_layer, n, "all layers placed");
    let mut used = vec![false; workers.len()];
    for (i, s) in p.stages.iter().enumerate() {
        assert!(s.first_layer < s.end_layer, "stage {i} is empty");
        if i > 0 {
            assert_eq!(
                s.first_layer,
                p.stages[i - 1].end_layer,
                "stage {i} not contiguous"
            );
        }
        assert!(
            req.profile.cut_allowed(s.first_layer),
            "stage {i} starts at layer {}, which shares KV with a layer before",
            s.first_layer
        );
        assert!(!used[s.worker], "worker {} used twice", s.worker);
        used[s.worker] = true;
        assert_eq!(
            s.has_embedding,
            i == 0 || req.profile.embedding_on_every_stage
        );
        assert_eq!(s.has_head, i == p.stages.len() - 1);
        let w = &workers[s.worker];
        assert!(
            s.total_bytes() <= req.margin.usable_bytes(w),
            "stage {i} on {} uses {} of {} usable",
            w.name,
            s.total_bytes(),
            req.margin.usable_bytes(w)
        );
        assert_eq!(s.free_after, w.free_bytes - s.total_bytes());
        let layers: u64 = req.profile.layers[s.first_layer..s.end_layer]
            .iter()
            .map(|l| l.weight_bytes)
            .sum();
        let extra = if s.has_embedding {
            req.profile.embedding_bytes
        } else {
            0
        } + if s.has_head {
            req.profile.head_bytes
        } else {
            0
        };
        assert_eq!(s.weight_bytes, layers + extra);
        // Every layer holds the whole pool, each sequence in whole 32-token
        // blocks; a sliding layer two rings per sequence (its own and the
        // prefix cache's snapshot) of its window beside a batch (window +
        // batch - 1 positions, whole blocks), at most that.
        let pool_tokens = (req.ctx_size.div_ceil(32) * 32 * req.parallel) as u64;
        let kv: u64 = req.profile.layers[s.first_layer..s.end_layer]
            .iter()
            .map(|l| {
                let held = l.kv_window_tokens.map_or(pool_tokens, |w| {
                    let ring = (w + req.max_batch_tokens - 1).div_ceil(32) * 32;
                    ((ring * req.parallel * 2) as u64).min(pool_tokens)
                });
                l.kv_bytes_per_token(req.kv_type) * held
            })
            .sum();
        assert_eq!(s.kv_bytes, kv);
        // Recurrent state: per sequence on every DeltaNet layer, whatever
        // the context.
        let state: u64 = req.profile.layers[s.first_layer..s.end_layer]
            .iter()
            .map(|l| l.state_bytes_per_seq * req.parallel as u64)
            .sum();
        assert_eq!(s.state_bytes, state);
        // The numbers are the model crate's stage memory, which the worker
        // admits a slice by.
        let m = req.profile.stage_memory(
            LayerRange {
                first: s.first_layer,
                end: s.end_layer,
            },
            &req.stage_load(),
        );
        assert_eq!(
            (
                s.weight_bytes,
                s.expert_bytes,
                s.kv_bytes,
                s.state_bytes,
                s.scratch_bytes
            ),
            (
                m.weight_bytes,
                m.expert_bytes,
                m.kv_bytes,
                m.state_bytes,
                m.scratch_bytes
            )
        );
        assert_eq!(s.total_bytes(), m.total_bytes);
    }
    let total: u64 = p.stages.iter().map(|s| s.weight_bytes).sum();
    // With per-layer embeddings every stage holds the embedding.
    let embedding_copies = if req.profile.embedding_on_every_stage {
        p.stages.len() as u64 - 1
    } else {
        0
    };
    assert_eq!(
        total,
        req.profile.total_weight_bytes() + embedding_copies * req.profile.embedding_bytes,
        "every weight counted once (tied head counted as a copy)"
    );
    assert!(p.est_time_per_token_s > 0.0);
    // Routed experts are held once, and a token reads what the profile says.
    let experts: u64 = p.stages.iter().map(|s| s.expert_bytes).sum();
    assert_eq!(experts, req.profile.total_expert_bytes());
    let read: u64 = p.stages.iter().map(|s| s.read_weight_bytes_per_token).sum();
    assert_eq!(read, req.profile.active_bytes_per_token());
}

/// xorshift64, seeded: inputs are reproducible from the printed seed.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Uniform in `[-1, 1]`.
    pub fn signed_unit(&mut self) -> f64 {
        (self.next() % 2_000_001) as f64 / 1_000_000.0 - 1.0
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, (self.next() % (i as u64 + 1)) as usize);
        }
    }
}
