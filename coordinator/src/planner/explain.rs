//! Why a model does not fit, and what would make it fit (found by re-planning).

use std::fmt;

use strata_model::profile::KvType;

use super::dp::Sizes;
use super::units::format_bytes;
use super::{try_plan, Backend, PlanRequest, SafetyMargin, WorkerSpec};

/// Context sizes are suggested in steps of this many tokens (when above it).
pub const CTX_STEP_TOKENS: usize = 256;
const MIB: u64 = 1024 * 1024;

/// The does-not-fit explanation.
#[derive(Debug, Clone, PartialEq)]
pub struct DoesNotFit {
    /// Everything the model needs with one stage per worker.
    pub needed_bytes: u64,
    pub weight_bytes: u64,
    pub kv_bytes: u64,
    /// Recurrent state of every DeltaNet layer for `parallel` sequences.
    pub state_bytes: u64,
    pub scratch_bytes_per_stage: u64,
    /// Stages assumed for `needed_bytes` (one per worker, at most one per layer).
    pub n_stages: usize,
    pub n_workers: usize,
    pub free_bytes: u64,
    /// Free memory less the safety margins.
    pub usable_bytes: u64,
    /// `needed - usable` (0 when it fits in total but not layer by layer).
    pub short_by_bytes: u64,
    /// The largest layer with its KV (or run of layers no stage boundary
    /// may split: Gemma 4's KV-sharing layers and the layers they read), and
    /// the most any one worker can hold (for the layer-by-layer case).
    pub largest_layer_bytes: u64,
    pub largest_usable_bytes: u64,
    pub ctx_size: usize,
    pub parallel: usize,
    pub kv_type: KvType,
    pub margin: SafetyMargin,
    pub suggestions: Suggestions,
}

/// Concrete changes that make the plan fit, each checked by re-planning.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Suggestions {
    /// Largest context (a multiple of [`CTX_STEP_TOKENS`] when at least that)
    /// that fits with the same KV type and parallelism; `None` if none does.
    pub max_ctx_size: Option<usize>,
    /// Largest `parallel` that fits at the requested context (only asked
    /// when more than one sequence was requested).
    pub max_parallel: Option<usize>,
    /// Whether q8_0 KV fits at the requested context (`None` when the KV
    /// already is q8_0), and the largest context with q8_0 KV.
    pub q8_0_kv_fits: Option<bool>,
    pub q8_0_max_ctx_size: Option<usize>,
    /// Free memory one more worker (own host, average speed, a GPU unless
    /// every worker is a CPU) would need.
    pub extra_worker_free_bytes: Option<u64>,
    /// "GPU" or "CPU": the kind of that worker.
    pub extra_worker_kind: &'static str,
}

fn fits(req: &PlanRequest, workers: &[WorkerSpec]) -> bool {
    matches!(try_plan(req, workers), Ok(Some(_)))
}

/// Largest `x` in `[lo, hi]` with `ok(x)`, assuming `ok` is monotone (true then false).
fn largest(lo: usize, hi: usize, ok: impl Fn(usize) -> bool) -> Option<usize> {
    if lo > hi || !ok(lo) {
        return None;
    }
    let (mut good, mut bad) = (lo, hi + 1);
    while bad - good > 1 {
        let mid = good + (bad - good) / 2;
        if ok(mid) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    Some(good)
}

fn max_ctx(req: &PlanRequest, workers: &[WorkerSpec], below: usize) -> Option<usize> {
    let with_ctx = |c: usize| PlanRequest {
        ctx_size: c,
        ..req.clone()
    };
    let best = largest(1, below, |c| fits(&with_ctx(c), workers))?;
    Some(if best >= CTX_STEP_TOKENS {
        best / CTX_STEP_TOKENS * CTX_STEP_TOKENS
    } else {
        best
    })
}

/// The backend of a suggested extra worker: CPU only when every worker is.
fn extra_backend(workers: &[WorkerSpec]) -> Backend {
    if workers.iter().all(|w| w.backend == Backend::Cpu) {
        Backend::Cpu
    } else {
        Backend::Cuda
    }
}

fn extra_worker(req: &PlanRequest, workers: &[WorkerSpec]) -> Option<u64> {
    let backend = extra_backend(workers);
    let with = |free_mib: usize| {
        let mut ws = workers.to_vec();
        ws.push(WorkerSpec::new(
            "another worker",
            backend,
            "another host",
            free_mib as u64 * MIB,
        ));
        fits(req, &ws)
    };
    // Enough to hold the whole model alone, margin included.
    let sizes = Sizes::new(req);
    let alone = sizes.total_with_stages(1) as f64 / (1.0 - req.margin.fraction).max(0.01);
    let hi_mib = ((alone as u64 + req.margin.fixed_gpu_bytes) / MIB + 2) as usize;
    if !with(hi_mib) {
        return None;
    }
    let lo = largest(1, hi_mib, |m| !with(m)).map_or(1, |m| m + 1);
    Some(lo as u64 * MIB)
}

pub(super) fn does_not_fit(req: &PlanRequest, workers: &[WorkerSpec]) -> DoesNotFit {
    let sizes = Sizes::new(req);
    let n = req.n_layers();
    let stages = workers.len().min(n).max(1);
    let needed_bytes = sizes.total_with_stages(stages);
    let usable: Vec<u64> = workers.iter().map(|w| req.margin.usable_bytes(w)).collect();
    let usable_bytes: u64 = usable.iter().sum();
    let cuts: Vec<usize> = (0..=n)
        .filter(|&c| c == 0 || c == n || req.profile.cut_allowed(c))
        .collect();
    let largest_layer_bytes = cuts
        .windows(2)
        .map(|w| sizes.memory(w[0], w[1]))
        .max()
        .unwrap_or(0);

    let mut s = Suggestions {
        max_ctx_size: max_ctx(req, workers, req.ctx_size.saturating_sub(1)),
        ..Default::default()
    };
    if req.parallel > 1 {
        s.max_parallel = largest(1, req.parallel - 1, |p| {
            fits(
                &PlanRequest {
                    parallel: p,
                    ..req.clone()
                },
                workers,
            )
        });
    }
    if req.kv_type == KvType::F16 {
        let q8 = PlanRequest {
            kv_type: KvType::Q8_0,
            ..req.clone()
        };
        let ok = fits(&q8, workers);
        s.q8_0_kv_fits = Some(ok);
        s.q8_0_max_ctx_size = if ok {
            None
        } else {
            max_ctx(&q8, workers, req.ctx_size.saturating_sub(1))
        };
    }
    s.extra_worker_free_bytes = extra_worker(req, workers);
    s.extra_worker_kind = match extra_backend(workers) {
        Backend::Cpu => "CPU",
        Backend::Cuda => "GPU",
    };

    DoesNotFit {
        needed_bytes,
        weight_bytes: sizes.weights(0, n),
        kv_bytes: sizes.kv(0, n),
        state_bytes: sizes.state(0, n),
        scratch_bytes_per_stage: sizes.scratch_per_stage(),
        n_stages: stages,
        n_workers: workers.len(),
        free_bytes: workers.iter().map(|w| w.free_bytes).sum(),
        usable_bytes,
        short_by_bytes: needed_bytes.saturating_sub(usable_bytes),
        largest_layer_bytes,
        largest_usable_bytes: usable.iter().copied().max().unwrap_or(0),
        ctx_size: req.ctx_size,
        parallel: req.parallel,
        kv_type: req.kv_type,
        margin: req.margin,
        suggestions: s,
    }
}

impl fmt::Display for DoesNotFit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = format_bytes;
        // Only a model with DeltaNet layers has recurrent state to name.
        let state = if self.state_bytes > 0 {
            format!(
                ", recurrent state {} for {} sequence(s)",
                b(self.state_bytes),
                self.parallel
            )
        } else {
            String::new()
        };
        writeln!(
            f,
            "the model does not fit: it needs {} (weights {}, KV {} for {} tokens x {} sequence(s) in {}{state}, scratch {} x {} stage(s))",
            b(self.needed_bytes),
            b(self.weight_bytes),
            b(self.kv_bytes),
            self.ctx_size,
            self.parallel,
            self.kv_type.name(),
            b(self.scratch_bytes_per_stage),
            self.n_stages,
        )?;
        write!(
            f,
            "but the {} worker(s) have {} free, {} usable after the safety margin ({})",
            self.n_workers,
            b(self.free_bytes),
            b(self.usable_bytes),
            self.margin
        )?;
        if self.short_by_bytes > 0 {
            writeln!(f, ": short by {}", b(self.short_by_bytes))?;
        } else {
            writeln!(
                f,
                ": enough in total, but not layer by layer (the largest layer, or run of layers that share KV, with its KV or state needs {}, \
                 the largest worker can hold {})",
                b(self.largest_layer_bytes),
                b(self.largest_usable_bytes)
            )?;
        }
        let s = &self.suggestions;
        write!(f, "what would make it fit:")?;
        match s.max_ctx_size {
            Some(c) => write!(
                f,
                "\n  - a smaller context: --ctx-size {c} fits (the largest that does)"
            )?,
            None => write!(f, "\n  - no smaller context fits")?,
        }
        if let Some(p) = s.max_parallel {
            write!(
                f,
                "\n  - fewer sequences: --parallel {p} fits at --ctx-size {}",
                self.ctx_size
            )?;
        }
        match (s.q8_0_kv_fits, s.q8_0_max_ctx_size) {
            (Some(true), _) => write!(
                f,
                "\n  - KV in q8_0: --cache-type-k q8_0 --cache-type-v q8_0 fits at --ctx-size {}",
                self.ctx_size
            )?,
            (Some(false), Some(c)) => write!(
                f,
                "\n  - KV in q8_0 does not fit at --ctx-size {}; with it --ctx-size {c} fits",
                self.ctx_size
            )?,
            (Some(false), None) => write!(f, "\n  - KV in q8_0 does not fit either")?,
            (None, _) => {}
        }
        match s.extra_worker_free_bytes {
            Some(x) => write!(
                f,
                "\n  - another {} worker with at least {} free",
                s.extra_worker_kind,
                b(x)
            )?,
            None => write!(f, "\n  - no single extra worker makes it fit")?,
        }
        Ok(())
    }
}
