//! `strata serve` as a library call: open the model, start answering HTTP
//! (503 while loading), place the model on the workers, load every stage,
//! start the serving loop, and serve until shutdown.

use std::path::PathBuf;
use std::sync::Arc;

use strata_model::arch::HyperParams;
use strata_model::chat::ChatTemplate;
use strata_model::profile::{KvType, MemoryProfile};
use strata_model::slice::{model_digest, LayerRange};
use strata_model::tokenizer::Tokenizer;
use strata_model::GgufFile;
use strata_proto::v1;

use crate::api::{router, AppState, Ready};
use crate::cluster::{
    connect_workers, load_stages, worker_specs, LoadEvent, LoadOptions, StageAssignment,
};
use crate::engine::{Engine, EngineConfig};
use crate::planner::{plan, table, PlanRequest};
use crate::scheduler::BatchPolicy;

/// Everything `strata serve` is told.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub model_path: PathBuf,
    /// Worker addresses, in no particular order (the planner orders them).
    pub workers: Vec<String>,
    pub token: String,
    /// Workers whose machine has the model at `model_path` (the embedded
    /// worker): they read it directly instead of searching or being pushed.
    pub local_workers: Vec<String>,
    pub listen: std::net::SocketAddr,
    pub ctx_size: usize,
    pub parallel: usize,
    pub api_key: Option<String>,
    /// Model name in the API (default: general.name or the file name).
    pub alias: Option<String>,
    pub act_dtype: v1::ActDtype,
    pub batch_tokens: usize,
    /// Micro-batches in flight (default: one per stage).
    pub micro_batches: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Model(String),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Load(String),
}

/// What a caller may show while the model loads.
pub trait LoadReporter: Send {
    fn plan(&mut self, _table: &str) {}
    fn event(&mut self, _event: &LoadEvent) {}
    fn ready(&mut self, _addr: std::net::SocketAddr) {}
}

/// Reports through `tracing` only.
pub struct LogReporter;
impl LoadReporter for LogReporter {}

struct OpenedModel {
    file: Arc<GgufFile>,
    hp: HyperParams,
    digest: String,
    tokenizer: Arc<Tokenizer>,
    template: ChatTemplate,
    name: String,
}

fn open_model(path: &std::path::Path) -> Result<OpenedModel, ServeError> {
    let err = |e: &dyn std::fmt::Display| ServeError::Model(format!("{}: {e}", path.display()));
    let file = GgufFile::open(path).map_err(|e| err(&e))?;
    let hp = HyperParams::from_gguf(&file).map_err(|e| err(&e))?;
    let tokenizer = Tokenizer::from_gguf(&file).map_err(|e| err(&e))?;
    let template = ChatTemplate::from_gguf(&file).map_err(|e| err(&e))?;
    let digest = model_digest(&file).map_err(|e| err(&e))?;
    let name = file
        .get_str("general.name")
        .map(str::to_string)
        .unwrap_or_else(|| {
            path.file_stem()
                .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned())
        });
    Ok(OpenedModel {
        file: Arc::new(file),
        hp,
        digest,
        tokenizer: Arc::new(tokenizer),
        template,
        name,
    })
}

/// Serves until `shutdown` completes. The HTTP port answers (503) from the
/// start, so a client or a health check sees loading progress.
pub async fn serve(
    config: ServeConfig,
    mut reporter: impl LoadReporter + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let path = config.model_path.clone();
    let model = tokio::task::spawn_blocking(move || open_model(&path))
        .await
        .map_err(|e| ServeError::Model(e.to_string()))??;
    let name = config.alias.clone().unwrap_or_else(|| model.name.clone());
    let state = AppState::new(name, config.api_key.clone());
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: config.listen,
        source,
    })?;
    tracing::info!("HTTP API on http://{bound}/v1 (503 until the model is loaded)");
    if !bound.ip().is_loopback() && config.api_key.is_none() {
        tracing::warn!("listening on {bound} beyond this machine without --api-key");
    }
    let app = router(state.clone());
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    });

    match start_pipeline(&config, model, &state, &mut reporter).await {
        Ok(ready) => {
            state.set_ready(ready);
            reporter.ready(bound);
            tracing::info!("ready: http://{bound}/v1");
        }
        Err(e) => {
            // Keep answering so /health says why, as llama-server does.
            tracing::error!("{e}");
            state.set_failed(e.to_string());
        }
    }
    match http.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ServeError::Listen {
            addr: bound,
            source: e,
        }),
        Err(e) => Err(ServeError::Load(format!("the HTTP server task: {e}"))),
    }
}

async fn start_pipeline(
    config: &ServeConfig,
    model: OpenedModel,
    state: &AppState,
    reporter: &mut impl LoadReporter,
) -> Result<Ready, ServeError> {
    let load_err = |e: &dyn std::fmt::Display| ServeError::Load(e.to_string());
    if config.workers.is_empty() {
        return Err(ServeError::Load("no workers to serve on".into()));
    }
    state.set_loading(format!("connecting to {} worker(s)", config.workers.len()));
    let workers = connect_workers(&config.workers, &config.token)
        .await
        .map_err(|e| load_err(&e))?;
    let specs = worker_specs(&workers);
    let ctx_size = config.ctx_size.min(model.hp.context_length.max(1));
    if ctx_size < config.ctx_size {
        tracing::warn!(
            "--ctx-size {} is beyond the model's training context; using {ctx_size}",
            config.ctx_size
        );
    }
    let profile = MemoryProfile::from_gguf(&model.file, &model.hp);
    let act_bytes = if config.act_dtype == v1::ActDtype::F32 {
        4
    } else {
        2
    };
    let req = PlanRequest {
        parallel: config.parallel,
        max_batch_tokens: config.batch_tokens,
        activation_bytes_per_token: act_bytes * model.hp.d_model as u64,
        ..PlanRequest::new(profile, model.hp.d_model, ctx_size, KvType::F16)
    };
    let placement = plan(&req, &specs).map_err(|e| load_err(&e))?;
    let shown = table(&placement, &specs);
    tracing::debug!("placement:\n{shown}");
    reporter.plan(&shown);

    let stages: Vec<StageAssignment> = placement
        .stages
        .iter()
        .map(|s| {
            let w = workers[s.worker].clone();
            let local = config.local_workers.contains(&w.addr);
            StageAssignment {
                worker: w,
                range: LayerRange {
                    first: s.first_layer,
                    end: s.end_layer,
                },
                model_path: local.then(|| config.model_path.display().to_string()),
            }
        })
        .collect();
    // Whole KV blocks per sequence, so `parallel` full sequences always fit.
    let mut block = 1usize;
    for w in &workers {
        let h = w
            .client
            .clone()
            .health(v1::HealthRequest {})
            .await
            .map_err(|e| ServeError::Load(format!("worker {}: health: {}", w.addr, e.message())))?;
        block = block.max(h.into_inner().kv_block_tokens.max(1) as usize);
    }
    let ctx_tokens = (ctx_size.div_ceil(block) * block * config.parallel) as u64;
    let options = LoadOptions {
        digest: model.digest.clone(),
        ctx_tokens,
        act_dtype: config.act_dtype,
    };
    let n_stages = stages.len();
    load_stages(&stages, model.file.clone(), &options, |e| {
        state.set_loading(describe(&e, n_stages));
        reporter.event(&e);
    })
    .await
    .map_err(|e| load_err(&e))?;

    let engine_config = EngineConfig {
        ctx_size,
        max_sequences: config.parallel,
        groups: config.micro_batches.unwrap_or(n_stages).max(1),
        policy: BatchPolicy {
            max_batch_tokens: config.batch_tokens,
            max_prefill_chunk: config.batch_tokens.div_ceil(2).max(1),
        },
        stop_tokens: model.tokenizer.end_of_generation_tokens().collect(),
        max_queued: 1024,
    };
    let engine = Engine::start(
        stages[0].worker.client.clone(),
        stages[0].worker.addr.clone(),
        engine_config,
    )
    .await
    .map_err(|e| {
        ServeError::Load(format!(
            "opening the data stream to stage 0 ({}): {}",
            stages[0].worker.addr,
            e.message()
        ))
    })?;
    tokio::spawn(watch_stages(stages.clone(), engine.clone()));
    let stage_names = stages
        .iter()
        .map(|s| format!("{} layers {}", s.worker.addr, s.range))
        .collect();
    Ok(Ready {
        engine,
        tokenizer: model.tokenizer,
        template: model.template,
        stages: stage_names,
    })
}

/// One line for `/health` while loading.
pub fn describe(e: &LoadEvent, n_stages: usize) -> String {
    match e {
        LoadEvent::Pushing {
            stage,
            addr,
            sent_bytes,
            total_bytes,
        } => format!(
            "stage {}/{n_stages} ({addr}): sending the slice, {} of {} MiB",
            stage + 1,
            sent_bytes >> 20,
            total_bytes >> 20
        ),
        LoadEvent::Progress {
            stage,
            addr,
            progress,
        } => {
            format!(
                "stage {}/{n_stages} ({addr}): {}",
                stage + 1,
                progress.message
            )
        }
    }
}

/// How often every stage's worker is asked for its health.
const HEALTH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Fails the engine (503s, `/health` says why) when a stage's worker stops
/// answering or loses its slice. Re-planning over the others is future work.
async fn watch_stages(stages: Vec<StageAssignment>, engine: Engine) {
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    loop {
        tick.tick().await;
        for (i, st) in stages.iter().enumerate() {
            let mut client = st.worker.client.clone();
            let probe =
                tokio::time::timeout(HEALTH_INTERVAL * 2, client.health(v1::HealthRequest {}))
                    .await;
            let why = match probe {
                Err(_) => Some("does not answer".to_string()),
                Ok(Err(e)) => Some(format!("is unreachable: {}", e.message())),
                Ok(Ok(h)) => {
                    let h = h.into_inner();
                    let holds = h.layers.is_some_and(|l| {
                        l.first as usize == st.range.first && l.end as usize == st.range.end
                    });
                    (h.status != v1::health_reply::Status::Ready as i32 || !holds)
                        .then(|| format!("no longer holds its layers ({})", h.message))
                }
            };
            if let Some(why) = why {
                engine.fail(format!(
                    "stage {i} worker {} (layers {}) {why}",
                    st.worker.addr, st.range
                ));
                return;
            }
        }
        if engine.stats().failure().is_some() {
            return;
        }
    }
}
