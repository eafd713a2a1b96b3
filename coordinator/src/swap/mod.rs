//! Several models on demand (`strata serve --config models.toml`), as
//! llama-swap does it for llama-server: a request for a model that is not
//! loaded loads it over the pool (the request waits; requests for loaded
//! models go on), a model idle for its `ttl` is unloaded, and loading a
//! model unloads the ones that share no group with it. Unlike llama-swap,
//! the planner checks at start that each group fits on the pool at once
//! ([`group_check`]), and refuses a group that does not, with the reason.

pub mod config;
mod group_check;
mod serve;
mod slot;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_proto::{Fingerprint, Trust};

pub use config::{ConfigError, Defaults, ModelEntry as ModelConfig, SwapConfig};
pub use serve::serve_models;
use slot::{Held, Slot, SlotState};

use crate::api::server::ModelEntry;
use crate::api::{ApiError, Ready};
use crate::serve::{open_model, start_pipeline, LoadReporter, ServeConfig};

/// A worker started for one model (the embedded worker of `strata serve`).
pub struct LaunchedWorker {
    pub addr: String,
    pub pin: Fingerprint,
    pub token: String,
    /// Dropping or sending stops it.
    pub stop: tokio::sync::oneshot::Sender<()>,
}

pub type LaunchFuture = Pin<Box<dyn Future<Output = Result<LaunchedWorker, String>> + Send>>;

/// Starts a worker that may read `model` itself.
pub trait WorkerLauncher: Send + Sync {
    fn launch(&self, model: PathBuf) -> LaunchFuture;
}

/// Where a model's workers come from.
pub enum Workers {
    /// One embedded worker per loaded model; they share this machine.
    Embedded(Arc<dyn WorkerLauncher>),
    /// The server's `--worker`s; a worker holds one model's stage.
    Remote {
        addrs: Vec<String>,
        token: String,
        trust: Trust,
    },
}

/// The models of a models file and what each is doing.
pub struct ModelSwap {
    config: SwapConfig,
    /// Server-wide settings; each model's file and flags go over them.
    base: ServeConfig,
    workers: Workers,
    slots: Vec<Mutex<Slot>>,
    /// One load or unload at a time: they share the pool.
    loads: tokio::sync::Mutex<()>,
}

/// How long a model being swapped out may take to finish its requests.
const DRAIN_MAX: Duration = Duration::from_secs(600);

/// How often the ttl is checked.
const TTL_TICK: Duration = Duration::from_millis(500);

impl ModelSwap {
    pub fn new(config: SwapConfig, base: ServeConfig, workers: Workers) -> Arc<ModelSwap> {
        let slots = config
            .models
            .iter()
            .map(|_| Mutex::new(Slot::new()))
            .collect();
        Arc::new(ModelSwap {
            config,
            base,
            workers,
            slots,
            loads: tokio::sync::Mutex::new(()),
        })
    }

    pub fn config(&self) -> &SwapConfig {
        &self.config
    }

    fn slot(&self, i: usize) -> std::sync::MutexGuard<'_, Slot> {
        self.slots[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every model with its state, for `/v1/models`, `/v1/pool`, `/health`.
    pub fn entries(&self) -> Vec<ModelEntry> {
        self.config
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let slot = self.slot(i);
                let (state, message, engine) = match &slot.state {
                    SlotState::Unloaded => ("unloaded", None, None),
                    SlotState::Loading(why) => ("loading", Some(why.clone()), None),
                    SlotState::Ready(r) => ("ready", None, Some(r.engine.clone())),
                    SlotState::Failed(why) => ("failed", Some(why.clone()), None),
                };
                ModelEntry {
                    id: m.name.clone(),
                    state: state.to_string(),
                    message,
                    engine,
                }
            })
            .collect()
    }

    /// Which model `requested` names; `None`: the loaded one, else the first.
    fn resolve(&self, requested: Option<&str>) -> Result<usize, ApiError> {
        match requested.filter(|r| !r.is_empty()) {
            Some(id) => self
                .config
                .find(id)
                .ok_or_else(|| ApiError::model_not_found(id)),
            None => Ok((0..self.slots.len())
                .find(|&i| matches!(self.slot(i).state, SlotState::Ready(_)))
                .unwrap_or(0)),
        }
    }

    /// The model, loaded: now if it is, else after loading it (and
    /// unloading the models that may not stay next to it).
    pub async fn ready(&self, requested: Option<&str>) -> Result<Arc<Ready>, ApiError> {
        let i = self.resolve(requested)?;
        if let Some(r) = self.slot(i).serving() {
            return Ok(r);
        }
        let _turn = self.loads.lock().await;
        // Loaded by the request before us in the queue, or loaded and
        // failing (the pool lost workers): its supervisor is on it.
        if let SlotState::Ready(r) = &self.slot(i).state {
            return match r.engine.stats().failure() {
                None => Ok(r.clone()),
                Some(why) => Err(ApiError::unavailable(format!("the pipeline failed: {why}"))),
            };
        }
        let name = self.config.models[i].name.clone();
        for j in 0..self.slots.len() {
            let other = &self.config.models[j].name;
            if j != i && self.slot(j).is_loaded() && !self.config.together(&name, other) {
                tracing::info!("unloading {other} to load {name} (no group holds both)");
                self.drain(j, &name).await;
                self.unload(j, &format!("unloaded to load {name}")).await;
            }
        }
        self.load(i)
            .await
            .map_err(|e| ApiError::unavailable(format!("loading model {name}: {e}")))
    }

    async fn load(&self, i: usize) -> Result<Arc<Ready>, String> {
        let entry = &self.config.models[i];
        let name = entry.name.clone();
        tracing::info!("loading model {name} from {}", entry.file.display());
        self.slot(i).state = SlotState::Loading("opening the model file".into());
        let started = Instant::now();
        let result = self.start(i).await;
        let mut slot = self.slot(i);
        match result {
            Ok((ready, held)) => {
                let ready = Arc::new(ready);
                tracing::info!(
                    "model {name} loaded in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                slot.state = SlotState::Ready(ready.clone());
                slot.held = Some(held);
                slot.last_busy = Instant::now();
                Ok(ready)
            }
            Err(e) => {
                tracing::error!("model {name}: {e}");
                slot.state = SlotState::Failed(e.clone());
                Err(e)
            }
        }
    }

    /// Opens the model, gets its workers, loads it on them.
    async fn start(&self, i: usize) -> Result<(Ready, Held), String> {
        let entry = &self.config.models[i];
        let path = entry.file.clone();
        let model = tokio::task::spawn_blocking(move || open_model(&path))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let mut config = ServeConfig {
            model_path: entry.file.clone(),
            ctx_size: entry.ctx_size,
            parallel: entry.parallel,
            batch_tokens: entry.batch_tokens,
            kv_type: entry.kv_type,
            alias: Some(entry.name.clone()),
            ..self.base.clone()
        };
        let mut embedded = None;
        match &self.workers {
            Workers::Embedded(launcher) => {
                let w = launcher.launch(entry.file.clone()).await?;
                config.workers = vec![w.addr.clone()];
                config.local_workers = vec![w.addr.clone()];
                config.trust = Trust::Pinned([(w.addr.clone(), w.pin)].into());
                config.token = w.token;
                embedded = Some(w.stop);
            }
            Workers::Remote {
                addrs,
                token,
                trust,
            } => {
                // A worker holds one stage: leave the other models' alone.
                let busy = self.workers_in_use();
                config.workers = self
                    .allowed_workers(i, addrs)
                    .into_iter()
                    .filter(|a| !busy.contains(a))
                    .collect();
                config.token = token.clone();
                config.trust = trust.clone();
                // The models file says which workers each model may use.
                config.box_mates = false;
            }
        }
        let slot_ref = &self.slots[i];
        let loading = |m: String| {
            slot_ref.lock().unwrap_or_else(|p| p.into_inner()).state = SlotState::Loading(m);
        };
        let mut log = LogProgress {
            model: entry.name.clone(),
        };
        let (ready, supervisor) = start_pipeline(&config, model, &loading, &mut log)
            .await
            .map_err(|e| e.to_string())?;
        let workers = ready
            .engine
            .stats()
            .stage_views()
            .iter()
            .map(|v| v.addr.clone())
            .collect();
        let held = Held {
            engine: ready.engine.clone(),
            supervisor,
            embedded,
            workers,
        };
        Ok((ready, held))
    }

    /// The server's workers model `i` may use (its `workers`, else all).
    fn allowed_workers(&self, i: usize, addrs: &[String]) -> Vec<String> {
        match &self.config.models[i].workers {
            None => addrs.to_vec(),
            Some(only) => addrs
                .iter()
                .filter(|a| only.iter().any(|o| o.split('#').next() == Some(a.as_str())))
                .cloned()
                .collect(),
        }
    }

    fn workers_in_use(&self) -> Vec<String> {
        (0..self.slots.len())
            .filter_map(|j| self.slot(j).held.as_ref().map(|h| h.workers.clone()))
            .flatten()
            .collect()
    }

    /// Lets model `i` finish the requests it has (new ones wait for the
    /// load of `next`, then for `i` again), for at most [`DRAIN_MAX`].
    async fn drain(&self, i: usize, next: &str) {
        let engine = {
            let mut slot = self.slot(i);
            slot.state =
                SlotState::Loading(format!("finishing its requests, then unloaded for {next}"));
            slot.held.as_ref().map(|h| h.engine.clone())
        };
        let Some(engine) = engine else { return };
        let deadline = Instant::now() + DRAIN_MAX;
        while engine.stats().live() + engine.stats().queued() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Unloads model `i`: requests still running fail with `why`.
    async fn unload(&self, i: usize, why: &str) {
        let held = {
            let mut slot = self.slot(i);
            slot.state = SlotState::Unloaded;
            slot.held.take()
        };
        if let Some(h) = &held {
            let stages = h.engine.stats().stage_views();
            h.engine
                .fail(format!("model {} was {why}", self.config.models[i].name));
            h.supervisor.abort();
            for s in stages {
                let mut client = s.client.clone();
                let unload = client.unload(strata_proto::v1::UnloadRequest {});
                match tokio::time::timeout(Duration::from_secs(10), unload).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!("unloading {}: {}", s.addr, e.message()),
                    Err(_) => tracing::warn!("unloading {}: no answer within 10 s", s.addr),
                }
            }
        }
        if let Some(Held {
            embedded: Some(stop),
            ..
        }) = held
        {
            let _ = stop.send(());
        }
        tracing::info!("model {} {why}", self.config.models[i].name);
    }

    /// Unloads each model idle for its `ttl`, until the server stops.
    pub async fn run_ttl(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TTL_TICK);
        loop {
            tick.tick().await;
            for i in 0..self.slots.len() {
                let Some(ttl) = self.config.models[i].ttl else {
                    continue;
                };
                if !self.slot(i).idle_for(ttl) {
                    continue;
                }
                let _turn = self.loads.lock().await;
                // A request may have come while we waited for the lock.
                if self.slot(i).idle_for(ttl) {
                    self.unload(i, &format!("unloaded after {} s idle (ttl)", ttl.as_secs()))
                        .await;
                }
            }
        }
    }
}

/// Loading progress of a model, to the log (several models load while the
/// server runs: no progress bar on the terminal).
struct LogProgress {
    model: String,
}

impl LoadReporter for LogProgress {
    fn plan(&mut self, table: &str) {
        tracing::info!("model {}: placement\n{table}", self.model);
    }
    fn event(&mut self, e: &crate::cluster::LoadEvent) {
        use crate::cluster::LoadEvent;
        match e {
            LoadEvent::Pushing {
                sent_bytes,
                total_bytes,
                ..
            } if sent_bytes < total_bytes => {}
            e => tracing::info!("model {}: {}", self.model, crate::serve::describe(e, 0)),
        }
    }
}
