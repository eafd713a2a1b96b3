//! Placement planner: which worker holds which contiguous range of layers.
//!
//! Pure logic over plain data (no sockets): the model's [`MemoryProfile`], the
//! planned context and an ordered list of [`WorkerSpec`]s in, a [`Plan`] or a
//! [`PlanError::DoesNotFit`] with computed suggestions out.
//!
//! Cost model (per generated token of one sequence):
//! - a stage reads its layers' weights (in a mixture-of-experts layer only
//!   the dense part and the experts a token is routed to:
//!   `LayerProfile::active_bytes_per_token`), its layers' KV for the full
//!   planned context of one sequence (a sliding layer its window), and (last
//!   stage) the output head, at the worker's matvec bandwidth; the embedding
//!   lookup reads one row (free);
//! - each hop between stages sends `activation_bytes_per_token` over the link
//!   (latency + bytes / bandwidth): the link measured between the two
//!   workers' hosts (`WorkerSpec::peer_links`, steadied by `noise::steady_links`:
//!   latency from either way, bandwidth this way's where measured), else the larger latency and
//!   smaller bandwidth of the two workers' links to the coordinator
//!   (`Link::SAME_HOST` on one host);
//! - the coordinator's hops to the first stage and back from the last
//!   (token ids) cost those workers' link latency.
//!
//! The time per token is the sum over stages and hops. Ties (notably when no
//! worker has a measured bandwidth, so every split reads the same bytes at the
//! same speed) go to the plan that gives more layers back to the workers
//! that keep their KV on disk (`WorkerSpec::saved_layers`: a session saved before a
//! restart is found, whatever address the worker came back on), then to the
//! lower fullest stage's share of its usable memory, so the plan balances
//! by memory. Speeds and memory are first steadied
//! against measurement noise ([`noise`]), so a pool restarted unchanged gets
//! the same placement.
//!
//! Memory per stage is [`MemoryProfile::stage_memory`] for
//! [`PlanRequest::stage_load`], the function the worker admits a slice by:
//! weights (all experts held; + embedding on the first stage, + head on the
//! last; with tied embeddings the head is the embedding table again and is
//! counted twice), KV for `parallel` sequences of `ctx_size` tokens in whole
//! blocks on every layer (sliding layers too: the stage's pool is not
//! capped at the window), the recurrent state of `parallel` sequences on
//! every DeltaNet layer (it does not grow with context), scratch for
//! `max_batch_tokens` tokens of activations (+ logits of `parallel`
//! sequences on the last stage). It must fit the worker's free memory less
//! the [`SafetyMargin`].

mod dp;
mod explain;
pub mod group_fit;
pub mod noise;
pub mod synth_profile;
mod table;
pub mod units;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use strata_model::profile::{KvType, MemoryProfile, StageLoad};

pub use explain::{DoesNotFit, Suggestions};
pub use table::{legend, table};

const MIB: u64 = 1024 * 1024;

/// Device kind of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Cpu,
    Cuda,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
        }
    }
}

/// A network link: one-way latency and bandwidth.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    pub latency_s: f64,
    pub bandwidth_bytes_per_s: f64,
}

impl Link {
    /// 10 GbE with a typical RPC round: what we assume when nothing was measured.
    pub const DEFAULT_NETWORK: Link = Link {
        latency_s: 200e-6,
        bandwidth_bytes_per_s: 1.25e9,
    };
    /// Two devices of one host (PCIe, shared memory).
    pub const SAME_HOST: Link = Link {
        latency_s: 10e-6,
        bandwidth_bytes_per_s: 20e9,
    };

    pub fn transfer_s(&self, bytes: u64) -> f64 {
        self.latency_s + bytes as f64 / self.bandwidth_bytes_per_s
    }
}

impl Default for Link {
    fn default() -> Self {
        Link::DEFAULT_NETWORK
    }
}

/// One worker (one device) as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSpec {
    /// Address or display name.
    pub name: String,
    pub backend: Backend,
    /// Machine the device sits in: devices of one host are kept adjacent and
    /// talk over [`Link::SAME_HOST`].
    pub host: String,
    pub free_bytes: u64,
    /// Measured matvec bandwidth; `None` = unknown (taken as the mean of the
    /// known ones, or [`NOMINAL_BANDWIDTH_BYTES_PER_S`] when none is known).
    pub matvec_bandwidth_bytes_per_s: Option<f64>,
    /// The coordinator's link to the worker: its latency is charged for the
    /// coordinator's hops to a first stage and back from a last one, and a
    /// hop to a worker of another host with no measured link between them
    /// costs the larger latency and the smaller bandwidth of their two.
    pub link: Link,
    /// Links measured from this worker to others, by their `name`: a hop
    /// from it to one of them costs that link instead of the two ends'
    /// (and a hop back, where that way was not measured).
    pub peer_links: BTreeMap<String, Link>,
    /// Workers, by `name`, this one could not connect to: a hop from it to
    /// one of them would fail, so a plan has one only where every worker
    /// order the planner tries does.
    pub unreachable: BTreeSet<String>,
    /// Layers whose KV blocks the worker keeps on disk for this model (a
    /// session saved before a restart): of two plans equal in time, the one
    /// that gives more of them back to it wins.
    pub saved_layers: BTreeSet<usize>,
    /// What the device is (backend, device name, threads); workers of one
    /// host with the same non-empty `hardware` are planned at one speed
    /// (see [`noise`]). Empty = unknown.
    pub hardware: String,
}

impl WorkerSpec {
    pub fn new(
        name: impl Into<String>,
        backend: Backend,
        host: impl Into<String>,
        free_bytes: u64,
    ) -> Self {
        WorkerSpec {
            name: name.into(),
            backend,
            host: host.into(),
            free_bytes,
            matvec_bandwidth_bytes_per_s: None,
            link: Link::default(),
            peer_links: BTreeMap::new(),
            unreachable: BTreeSet::new(),
            saved_layers: BTreeSet::new(),
            hardware: String::new(),
        }
    }
    pub fn with_bandwidth(mut self, bytes_per_s: f64) -> Self {
        self.matvec_bandwidth_bytes_per_s = Some(bytes_per_s);
        self
    }
    pub fn with_link(mut self, link: Link) -> Self {
        self.link = link;
        self
    }
    pub fn with_peer_links(mut self, links: BTreeMap<String, Link>) -> Self {
        self.peer_links = links;
        self
    }
    pub fn with_unreachable(mut self, names: impl IntoIterator<Item = String>) -> Self {
        self.unreachable = names.into_iter().collect();
        self
    }
    pub fn with_saved_layers(mut self, layers: impl IntoIterator<Item = usize>) -> Self {
        self.saved_layers = layers.into_iter().collect();
        self
    }
    pub fn with_hardware(mut self, hardware: impl Into<String>) -> Self {
        self.hardware = hardware.into();
        self
    }
}

/// Bandwidth assumed when no worker reports one (only ratios matter then).
pub const NOMINAL_BANDWIDTH_BYTES_PER_S: f64 = 100e9;

/// Memory kept free on every worker: `fraction` of its free memory plus a
/// fixed amount for the runtime (CUDA context, allocator slack).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SafetyMargin {
    pub fraction: f64,
    pub fixed_gpu_bytes: u64,
    pub fixed_cpu_bytes: u64,
}

impl Default for SafetyMargin {
    /// 5% of free memory + 256 MiB per GPU (+ 64 MiB per CPU worker).
    fn default() -> Self {
        SafetyMargin {
            fraction: 0.05,
            fixed_gpu_bytes: 256 * MIB,
            fixed_cpu_bytes: 64 * MIB,
        }
    }
}

impl SafetyMargin {
    pub fn reserved_bytes(&self, w: &WorkerSpec) -> u64 {
        let fixed = match w.backend {
            Backend::Cuda => self.fixed_gpu_bytes,
            Backend::Cpu => self.fixed_cpu_bytes,
        };
        ((w.free_bytes as f64 * self.fraction) as u64).saturating_add(fixed)
    }
    /// What the planner may fill on `w`.
    pub fn usable_bytes(&self, w: &WorkerSpec) -> u64 {
        w.free_bytes.saturating_sub(self.reserved_bytes(w))
    }
}

impl fmt::Display for SafetyMargin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.0}% of free memory + {} MiB per GPU / {} MiB per CPU worker",
            self.fraction * 100.0,
            self.fixed_gpu_bytes / MIB,
            self.fixed_cpu_bytes / MIB
        )
    }
}

/// What to plan for.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRequest {
    pub profile: MemoryProfile,
    /// Bytes sent between stages per token (f32 hidden state: `4 * d_model`).
    pub activation_bytes_per_token: u64,
    /// Context per sequence, in tokens.
    pub ctx_size: usize,
    /// Sequences held at once (each with `ctx_size` of KV).
    pub parallel: usize,
    pub kv_type: KvType,
    /// Largest batch in tokens (sizes activation scratch).
    pub max_batch_tokens: usize,
    pub margin: SafetyMargin,
}

/// Default `max_batch_tokens` (llama.cpp's micro-batch).
pub const DEFAULT_MAX_BATCH_TOKENS: usize = 512;

impl PlanRequest {
    pub fn new(profile: MemoryProfile, d_model: usize, ctx_size: usize, kv_type: KvType) -> Self {
        PlanRequest {
            profile,
            activation_bytes_per_token: 4 * d_model as u64,
            ctx_size,
            parallel: 1,
            kv_type,
            max_batch_tokens: DEFAULT_MAX_BATCH_TOKENS,
            margin: SafetyMargin::default(),
        }
    }
    pub fn n_layers(&self) -> usize {
        self.profile.layers.len()
    }
    /// What every stage is loaded for: `parallel` sequences of `ctx_size`
    /// tokens (each in whole KV blocks, as the coordinator asks workers).
    pub fn stage_load(&self) -> StageLoad {
        StageLoad::for_sequences(
            self.ctx_size,
            self.parallel,
            self.kv_type,
            self.max_batch_tokens,
        )
    }
}

/// One pipeline stage: layers `[first_layer, end_layer)` on `worker`.
#[derive(Debug, Clone, PartialEq)]
pub struct StagePlan {
    /// Index into the worker list given to [`plan`].
    pub worker: usize,
    pub first_layer: usize,
    pub end_layer: usize,
    /// Holds the token embedding (the first stage; every stage of a model
    /// with per-layer embeddings).
    pub has_embedding: bool,
    /// Holds the final norm and output head (the last stage).
    pub has_head: bool,
    /// Layer weights + embedding and head where held.
    pub weight_bytes: u64,
    /// Of `weight_bytes`, the routed experts (held, mostly not read).
    pub expert_bytes: u64,
    pub kv_bytes: u64,
    /// Recurrent state of the stage's DeltaNet layers for `parallel`
    /// sequences (0 without them; the same at any context).
    pub state_bytes: u64,
    /// Activation scratch (+ logits on the last stage).
    pub scratch_bytes: u64,
    /// The worker's free memory after this stage is loaded (the safety margin
    /// is part of it).
    pub free_after: u64,
    /// Weight bytes one decoded token reads here: dense weights, the experts
    /// it is routed to, the head on the last stage.
    pub read_weight_bytes_per_token: u64,
    /// KV bytes one token of one sequence reads here at the full context.
    pub read_kv_bytes_per_token: u64,
    /// Estimated compute time of this stage per token.
    pub time_per_token_s: f64,
}

impl StagePlan {
    pub fn n_layers(&self) -> usize {
        self.end_layer - self.first_layer
    }
    pub fn total_bytes(&self) -> u64 {
        self.weight_bytes + self.kv_bytes + self.state_bytes + self.scratch_bytes
    }
}

/// A placement: stages in pipeline order.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub stages: Vec<StagePlan>,
    /// Sum of stage compute times and hop costs (the coordinator's two
    /// included).
    pub est_time_per_token_s: f64,
    /// Whether every used worker had a measured bandwidth (otherwise the time
    /// is relative: equal speeds were assumed).
    pub bandwidth_measured: bool,
    /// Hops from a worker to one it could not connect to, where no worker
    /// order tried avoids them (0 otherwise): loading will likely fail.
    pub blocked_hops: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("no workers to plan over")]
    NoWorkers,
    #[error("the model has no layers")]
    NoLayers,
    #[error("invalid plan request: {0}")]
    Invalid(String),
    #[error("{0}")]
    DoesNotFit(Box<DoesNotFit>),
}

/// Plans `req` over `workers` (see the module docs for the model).
pub fn plan(req: &PlanRequest, workers: &[WorkerSpec]) -> Result<Plan, PlanError> {
    match try_plan(req, workers)? {
        Some(p) => Ok(p),
        None => Err(PlanError::DoesNotFit(Box::new(explain::does_not_fit(
            req, workers,
        )))),
    }
}

/// Like [`plan`], `Ok(None)` when nothing fits (no explanation computed).
pub fn try_plan(req: &PlanRequest, workers: &[WorkerSpec]) -> Result<Option<Plan>, PlanError> {
    if workers.is_empty() {
        return Err(PlanError::NoWorkers);
    }
    if req.profile.layers.is_empty() {
        return Err(PlanError::NoLayers);
    }
    if req.ctx_size == 0 || req.parallel == 0 || req.max_batch_tokens == 0 {
        return Err(PlanError::Invalid(format!(
            "ctx_size {}, parallel {} and max_batch_tokens {} must all be at least 1",
            req.ctx_size, req.parallel, req.max_batch_tokens
        )));
    }
    let bad_link = |l: &Link| !(l.bandwidth_bytes_per_s > 0.0 && l.latency_s >= 0.0);
    if let Some(w) = workers.iter().find(|w| {
        w.matvec_bandwidth_bytes_per_s
            .is_some_and(|b| !(b > 0.0 && b.is_finite()))
            || bad_link(&w.link)
            || w.peer_links.values().any(bad_link)
    }) {
        return Err(PlanError::Invalid(format!(
            "worker {}: bandwidths must be positive, latency not negative",
            w.name
        )));
    }
    // Planned in a stable order (noise.rs), reported in the caller's.
    let order = noise::stable_order(workers);
    let ordered: Vec<WorkerSpec> = order.iter().map(|&i| workers[i].clone()).collect();
    Ok(dp::best_plan(req, &ordered).map(|mut p| {
        for s in &mut p.stages {
            s.worker = order[s.worker];
        }
        p
    }))
}
