//! Counters of the serving loop, read by `/health` and `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct EngineStats {
    next_seq: SeqIds,
    queued: AtomicU64,
    live: AtomicU64,
    requests_total: AtomicU64,
    prompt_tokens_total: AtomicU64,
    /// Prompt tokens found in the prefix cache, and blocks it keeps.
    prompt_tokens_cached_total: AtomicU64,
    prefix_cache_blocks: AtomicU64,
    /// Of the cached tokens, those read back from the stages' disks, and
    /// the blocks the stages hold on disk (as far as the coordinator knows).
    prompt_tokens_restored_total: AtomicU64,
    prefix_disk_blocks: AtomicU64,
    generated_tokens_total: AtomicU64,
    cancelled_total: AtomicU64,
    failed_total: AtomicU64,
    batches_total: AtomicU64,
    batch_tokens_total: AtomicU64,
    in_flight_batches: AtomicU64,
    failure: Mutex<Option<String>>,
    epoch: AtomicU64,
    failovers_total: AtomicU64,
    replayed_tokens_total: AtomicU64,
    /// Milliseconds from losing a pipeline to the next token, last failover.
    last_pause_ms: AtomicU64,
    max_pause_ms: AtomicU64,
    /// Each stage of the attached pipeline, for `/health` and `/v1/pool`.
    stages: Mutex<Vec<super::StageView>>,
    /// Set while the pipeline is being rebuilt.
    recovering: Mutex<Option<String>>,
    /// Generated tokens per second over the last window (`/v1/pool`).
    rate: Mutex<TokenRate>,
}

/// Wire sequence ids. Each coordinator process counts from a random
/// multiple of 2^32: a worker frees the sequences of a data stream when it
/// ends, and the stream of a coordinator that died may end well after a new
/// one took over the workers (a QUIC connection ends by its idle timeout,
/// a stopped process's TCP connection when it is killed). With ids from 1
/// in both, that release freed the new coordinator's live sequences.
#[derive(Debug)]
struct SeqIds(AtomicU64);

impl Default for SeqIds {
    fn default() -> Self {
        SeqIds(AtomicU64::new(rand::random::<u64>() << 32))
    }
}

/// Tokens per second between two reads at least [`RATE_WINDOW`] apart:
/// whoever polls (the web page, each second or so) sees recent throughput.
#[derive(Debug, Default)]
struct TokenRate {
    last: Option<(std::time::Instant, u64)>,
    per_second: f64,
}

const RATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

impl EngineStats {
    pub(super) fn next_seq_id(&self) -> u64 {
        self.next_seq.0.fetch_add(1, Relaxed) + 1
    }
    pub(super) fn on_submit(&self, prompt_tokens: usize) {
        self.requests_total.fetch_add(1, Relaxed);
        self.prompt_tokens_total
            .fetch_add(prompt_tokens as u64, Relaxed);
        self.queued.fetch_add(1, Relaxed);
    }
    pub(super) fn on_prefix_hit(&self, tokens: usize) {
        self.prompt_tokens_cached_total
            .fetch_add(tokens as u64, Relaxed);
    }
    pub(super) fn set_prefix_cache_blocks(&self, blocks: usize) {
        self.prefix_cache_blocks.store(blocks as u64, Relaxed);
    }
    pub(super) fn on_prefix_restored(&self, tokens: usize) {
        self.prompt_tokens_restored_total
            .fetch_add(tokens as u64, Relaxed);
    }
    pub(super) fn set_prefix_disk_blocks(&self, blocks: usize) {
        self.prefix_disk_blocks.store(blocks as u64, Relaxed);
    }
    pub(super) fn on_admit(&self) {
        self.queued.fetch_sub(1, Relaxed);
        self.live.fetch_add(1, Relaxed);
    }
    /// A queued request went away before admission.
    pub(super) fn on_unqueue(&self) {
        self.queued.fetch_sub(1, Relaxed);
    }
    pub(super) fn on_retire(&self, cancelled: bool, failed: bool) {
        self.live.fetch_sub(1, Relaxed);
        if cancelled {
            self.cancelled_total.fetch_add(1, Relaxed);
        }
        if failed {
            self.failed_total.fetch_add(1, Relaxed);
        }
    }
    pub(super) fn on_batch_sent(&self, tokens: usize) {
        self.batches_total.fetch_add(1, Relaxed);
        self.batch_tokens_total.fetch_add(tokens as u64, Relaxed);
        self.in_flight_batches.fetch_add(1, Relaxed);
    }
    pub(super) fn on_batch_done(&self, sampled: usize) {
        self.in_flight_batches.fetch_sub(1, Relaxed);
        self.generated_tokens_total
            .fetch_add(sampled as u64, Relaxed);
    }
    pub(super) fn next_epoch(&self) -> u64 {
        self.epoch.fetch_add(1, Relaxed) + 1
    }
    pub(super) fn clear_failure(&self) {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
    /// A pipeline was lost with `replayed` tokens to rebuild.
    pub(super) fn on_failover(&self, replayed: usize) {
        self.failovers_total.fetch_add(1, Relaxed);
        self.replayed_tokens_total
            .fetch_add(replayed as u64, Relaxed);
    }
    /// A sequence's first token after a failover, `pause` after the loss.
    pub(super) fn on_resumed(&self, pause: std::time::Duration) {
        let ms = pause.as_millis() as u64;
        self.last_pause_ms.store(ms, Relaxed);
        self.max_pause_ms.fetch_max(ms, Relaxed);
    }
    pub fn failovers(&self) -> u64 {
        self.failovers_total.load(Relaxed)
    }
    pub fn set_stages(&self, stages: Vec<super::StageView>) {
        *self.stages.lock().unwrap_or_else(|p| p.into_inner()) = stages;
    }
    /// "ADDR (KV_TYPE KV) layers A..B" per stage.
    pub fn stages(&self) -> Vec<String> {
        self.stage_views().iter().map(|s| s.label()).collect()
    }
    pub fn stage_views(&self) -> Vec<super::StageView> {
        self.stages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    /// What the supervisor is doing about a lost pipeline (None: nothing).
    pub fn set_recovering(&self, what: Option<String>) {
        *self.recovering.lock().unwrap_or_else(|p| p.into_inner()) = what;
    }
    pub fn recovering(&self) -> Option<String> {
        self.recovering
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    pub(crate) fn set_failure(&self, why: String) {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    /// Why the loop can no longer serve, if it cannot.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    pub fn queued(&self) -> usize {
        self.queued.load(Relaxed) as usize
    }
    pub fn live(&self) -> usize {
        self.live.load(Relaxed) as usize
    }
    pub fn generated_tokens(&self) -> u64 {
        self.generated_tokens_total.load(Relaxed)
    }

    /// Generated tokens per second since the read before last window.
    pub fn tokens_per_second(&self) -> f64 {
        let now = std::time::Instant::now();
        let count = self.generated_tokens();
        let mut r = self.rate.lock().unwrap_or_else(|p| p.into_inner());
        match r.last {
            Some((at, _)) if now.duration_since(at) < RATE_WINDOW => {}
            Some((at, seen)) => {
                r.per_second =
                    count.saturating_sub(seen) as f64 / now.duration_since(at).as_secs_f64();
                r.last = Some((now, count));
            }
            None => r.last = Some((now, count)),
        }
        r.per_second
    }

    /// Prometheus text exposition.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP strata_{name} {help}\n# TYPE strata_{name} {kind}\nstrata_{name} {v}"
            );
        };
        metric(
            "requests_total",
            "counter",
            "Generations submitted.",
            self.requests_total.load(Relaxed),
        );
        metric(
            "prompt_tokens_total",
            "counter",
            "Prompt tokens submitted.",
            self.prompt_tokens_total.load(Relaxed),
        );
        metric(
            "prompt_tokens_cached_total",
            "counter",
            "Prompt tokens found in the prefix cache (not computed).",
            self.prompt_tokens_cached_total.load(Relaxed),
        );
        metric(
            "prefix_cache_blocks",
            "gauge",
            "KV blocks every stage keeps for the prefix cache.",
            self.prefix_cache_blocks.load(Relaxed),
        );
        metric(
            "prompt_tokens_restored_total",
            "counter",
            "Of the cached prompt tokens, those read back from the workers' KV cache directories.",
            self.prompt_tokens_restored_total.load(Relaxed),
        );
        metric(
            "prefix_disk_blocks",
            "gauge",
            "KV blocks the prefix cache can read back from the workers' disks.",
            self.prefix_disk_blocks.load(Relaxed),
        );
        metric(
            "generated_tokens_total",
            "counter",
            "Tokens sampled.",
            self.generated_tokens_total.load(Relaxed),
        );
        metric(
            "cancelled_total",
            "counter",
            "Generations cancelled by their client.",
            self.cancelled_total.load(Relaxed),
        );
        metric(
            "failed_total",
            "counter",
            "Generations failed by a stage error.",
            self.failed_total.load(Relaxed),
        );
        metric(
            "batches_total",
            "counter",
            "Micro-batches sent to stage 0.",
            self.batches_total.load(Relaxed),
        );
        metric(
            "batch_tokens_total",
            "counter",
            "Tokens in those micro-batches.",
            self.batch_tokens_total.load(Relaxed),
        );
        metric(
            "sequences_live",
            "gauge",
            "Sequences holding KV on the stages.",
            self.live.load(Relaxed),
        );
        metric(
            "requests_queued",
            "gauge",
            "Requests waiting for a sequence slot.",
            self.queued.load(Relaxed),
        );
        metric(
            "batches_in_flight",
            "gauge",
            "Micro-batches in the pipeline.",
            self.in_flight_batches.load(Relaxed),
        );
        metric(
            "failovers_total",
            "counter",
            "Pipelines lost and rebuilt (or found unable to serve).",
            self.failovers_total.load(Relaxed),
        );
        metric(
            "replayed_tokens_total",
            "counter",
            "Tokens re-run to rebuild live sequences' KV after a failover.",
            self.replayed_tokens_total.load(Relaxed),
        );
        metric(
            "failover_pause_last_ms",
            "gauge",
            "From losing the pipeline to a stream's next token, last failover.",
            self.last_pause_ms.load(Relaxed),
        );
        metric(
            "failover_pause_max_ms",
            "gauge",
            "Longest such pause since start.",
            self.max_pause_ms.load(Relaxed),
        );
        metric(
            "up",
            "gauge",
            "1 while the pipeline can serve.",
            u64::from(self.failure().is_none()),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::EngineStats;

    #[test]
    fn two_coordinators_number_their_sequences_apart() {
        let (a, b) = (EngineStats::default(), EngineStats::default());
        let first = a.next_seq_id();
        assert_eq!(a.next_seq_id(), first + 1);
        // Each counts from its own multiple of 2^32: a worker releasing one
        // coordinator's ids cannot free the other's.
        assert_ne!(first >> 32, b.next_seq_id() >> 32);
    }
}
