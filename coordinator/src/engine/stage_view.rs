//! What the serving loop knows of each stage of the attached pipeline, for
//! `/health` (one line per stage) and `/v1/pool` (the web page's pool view).

use strata_proto::WorkerClient;

/// One stage of the attached pipeline, as planned and loaded.
#[derive(Clone)]
pub struct StageView {
    pub addr: String,
    pub first_layer: usize,
    /// Exclusive.
    pub end_layer: usize,
    /// How the stage stores K and V ("f16", "q8_0", ...).
    pub kv_type: String,
    pub backend: String,
    pub device_name: String,
    pub total_memory_bytes: u64,
    /// What the worker offered before this stage was loaded.
    pub offered_memory_bytes: u64,
    /// Weights, KV, state and scratch the planner gave this stage.
    pub planned_bytes: u64,
    /// The planner's estimate of this stage's compute time per token.
    pub est_time_per_token_s: f64,
    /// The link measured to the stage's worker when it was planned.
    pub link: Option<crate::planner::Link>,
    /// The link the stage's worker measured to the next stage's (none on
    /// the last stage, between stages of one host, or not measured).
    pub next_link: Option<crate::planner::Link>,
    /// For live reads (`Health`) of the stage's KV use and link time.
    pub client: WorkerClient,
}

impl StageView {
    /// "ADDR (KV_TYPE KV) layers A..B": what `/health` lists.
    pub fn label(&self) -> String {
        format!(
            "{} ({} KV) layers {}..{}",
            self.addr, self.kv_type, self.first_layer, self.end_layer
        )
    }
}

// By hand: the gRPC client has no useful Debug.
impl std::fmt::Debug for StageView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label())
    }
}
