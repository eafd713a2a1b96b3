//! One model of a models file: loaded or not, and what holds it up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::Ready;

pub(super) enum SlotState {
    Unloaded,
    Loading(String),
    Ready(Arc<Ready>),
    /// The last load failed (the next request tries again).
    Failed(String),
}

/// What a loaded model holds beyond its serving loop.
pub(super) struct Held {
    /// Its serving loop (also while it drains for an unload).
    pub engine: crate::engine::Engine,
    /// Watches the pipeline and rebuilds it after a failure.
    pub supervisor: tokio::task::JoinHandle<()>,
    /// Stops the model's embedded worker.
    pub embedded: Option<tokio::sync::oneshot::Sender<()>>,
    /// Addresses of the workers its stages are on.
    pub workers: Vec<String>,
}

pub(super) struct Slot {
    pub state: SlotState,
    pub held: Option<Held>,
    /// When it last had a request running or queued.
    pub last_busy: Instant,
}

impl Slot {
    pub fn new() -> Slot {
        Slot {
            state: SlotState::Unloaded,
            held: None,
            last_busy: Instant::now(),
        }
    }

    /// The model if it can take a request now (and notes the use).
    pub fn serving(&mut self) -> Option<Arc<Ready>> {
        match &self.state {
            SlotState::Ready(r) if r.engine.stats().failure().is_none() => {
                self.last_busy = Instant::now();
                Some(r.clone())
            }
            _ => None,
        }
    }

    pub fn is_loaded(&self) -> bool {
        matches!(self.state, SlotState::Ready(_) | SlotState::Loading(_)) || self.held.is_some()
    }

    /// Loaded, with nothing running or queued for `ttl`.
    pub fn idle_for(&mut self, ttl: Duration) -> bool {
        let SlotState::Ready(r) = &self.state else {
            return false;
        };
        let s = r.engine.stats();
        if s.live() + s.queued() > 0 || s.recovering().is_some() {
            self.last_busy = Instant::now();
            return false;
        }
        self.last_busy.elapsed() >= ttl
    }
}
