//! `strata serve` as a library call: open the model, start answering HTTP
//! (503 while loading), place the model on the workers, load every stage,
//! start the serving loop, and serve until shutdown.

use std::path::PathBuf;
use std::sync::Arc;

use strata_model::arch::ModelSpec;
use strata_model::attention_order::{RowOrders, ServerBatching};
use strata_model::chat::ChatTemplate;
use strata_model::profile::KvType;
use strata_model::slice::model_digest;
use strata_model::tokenizer::Tokenizer;
use strata_model::GgufFile;
use strata_proto::transport::TransportKind;
use strata_proto::{v1, Trust};

use crate::api::{router, AppState, Ready};
use crate::cluster::LoadEvent;
use crate::engine::{Engine, EngineConfig};
use crate::pool::{stage_views, supervise, Attached, Pool, PoolSettings};
use crate::scheduler::BatchPolicy;

/// Everything `strata serve` is told.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub model_path: PathBuf,
    /// Worker addresses, in no particular order (the planner orders them).
    pub workers: Vec<String>,
    pub token: String,
    /// Each worker's pinned certificate, or plaintext links.
    pub trust: Trust,
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
    /// How every stage stores K and V (`--cache-type-k/-v`).
    pub kv_type: KvType,
    /// What carries the data plane's hops (`--transport`).
    pub transport: TransportKind,
    /// Add the other stages of a worker's box to the pool
    /// ([`crate::pool::PoolSettings::box_mates`]).
    pub box_mates: bool,
    pub batch_tokens: usize,
    /// Micro-batches in flight (default: one per stage).
    pub micro_batches: Option<usize>,
    /// A batch with no reply after this long means a stage hangs.
    pub batch_timeout: std::time::Duration,
    /// Reuse finished sequences' KV blocks for prompts with the same start.
    pub prefix_cache: bool,
    /// How long an HTTP client may take to send a request.
    pub http_limits: crate::api::HttpLimits,
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

pub(crate) struct OpenedModel {
    file: Arc<GgufFile>,
    hp: ModelSpec,
    digest: String,
    tokenizer: Arc<Tokenizer>,
    template: ChatTemplate,
    name: String,
}

pub(crate) fn open_model(path: &std::path::Path) -> Result<OpenedModel, ServeError> {
    let err = |e: &dyn std::fmt::Display| ServeError::Model(format!("{}: {e}", path.display()));
    let file = GgufFile::open(path).map_err(|e| err(&e))?;
    let hp = ModelSpec::from_gguf(&file).map_err(|e| err(&e))?;
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
    let state = AppState::with_limits(name, config.api_key.clone(), config.http_limits);
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
    let limits = config.http_limits;
    let http =
        tokio::spawn(async move { crate::api::serve_http(listener, app, limits, shutdown).await });

    let loading = |m: String| state.set_loading(m);
    match start_pipeline(&config, model, &loading, &mut reporter).await {
        Ok((ready, _supervisor)) => {
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

/// Places `model` on the workers of `config`, loads it and starts serving
/// it; `loading` hears each step. Returns what serving needs and the task
/// that watches the pipeline (aborting it stops failover, not serving).
pub(crate) async fn start_pipeline(
    config: &ServeConfig,
    model: OpenedModel,
    loading: &(dyn Fn(String) + Send + Sync),
    reporter: &mut impl LoadReporter,
) -> Result<(Ready, tokio::task::JoinHandle<()>), ServeError> {
    if config.workers.is_empty() {
        return Err(ServeError::Load("no workers to serve on".into()));
    }
    loading(format!("connecting to {} worker(s)", config.workers.len()));
    let settings = PoolSettings {
        model_path: config.model_path.clone(),
        workers: config.workers.clone(),
        token: config.token.clone(),
        trust: config.trust.clone(),
        local_workers: config.local_workers.clone(),
        ctx_size: config.ctx_size,
        parallel: config.parallel,
        batch_tokens: config.batch_tokens,
        act_dtype: config.act_dtype,
        kv_type: config.kv_type,
        transport: config.transport,
        box_mates: config.box_mates,
    };
    let mut pool = Pool::new(
        settings,
        model.file.clone(),
        model.hp.clone(),
        model.digest.clone(),
    );
    let ctx_size = pool.ctx_size();
    if ctx_size < config.ctx_size {
        tracing::warn!(
            "--ctx-size {} is beyond the model's training context; using {ctx_size}",
            config.ctx_size
        );
    }
    // Workers that do not answer yet are waited for while the rest cannot
    // hold the model (a pool is often started before its workers).
    let mut waiting = false;
    let (survey, stages, shown) = loop {
        let survey = pool.survey(&Default::default()).await;
        let lost_note = survey.lost_note();
        let planned = if survey.alive.is_empty() {
            Err("no worker answers".to_string())
        } else {
            pool.plan(&survey.alive)
        };
        match planned {
            Ok((stages, shown)) => {
                if !lost_note.is_empty() {
                    tracing::warn!(
                        "starting without {lost_note}; each is planned in when it answers"
                    );
                }
                break (survey, stages, shown);
            }
            Err(e) if lost_note.is_empty() => return Err(ServeError::Load(e)),
            Err(e) => {
                let why = format!("waiting for worker(s) {lost_note}: {e}");
                if !waiting {
                    tracing::warn!("{why}");
                    waiting = true;
                }
                loading(why);
                tokio::time::sleep(crate::pool::WATCH_INTERVAL).await;
            }
        }
    };
    for w in &survey.alive {
        tracing::info!(
            "worker {}: {} {}, {} MiB free, {:.1} GB/s",
            w.addr,
            w.caps.backend,
            w.caps.device_name,
            w.caps.free_memory_bytes >> 20,
            w.caps.matvec_bytes_per_second / 1e9
        );
    }
    tracing::debug!("placement:\n{shown}");
    reporter.plan(&shown);

    let n_stages = stages.len();
    pool.load(&stages, |e| {
        loading(describe(&e, n_stages));
        reporter.event(&e);
    })
    .await
    .map_err(ServeError::Load)?;

    // What every stage was loaded for (the pool's LoadSlice).
    let load = strata_model::profile::StageLoad::for_sequences(
        ctx_size,
        config.parallel,
        config.kv_type,
        config.batch_tokens,
    );
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
        batch_timeout: config.batch_timeout,
        prefix_cache: config.prefix_cache,
        kv_pool_blocks: load.kv_blocks(),
        row_orders: RowOrders {
            kv: config.kv_type,
            batching: ServerBatching::new(model.hp.server_checkpoints()),
        },
        // The stages' snapshot rows and rings (`STATE_COPIES_PER_SEQ`).
        state_snapshots: if resumes_from_snapshots(&model.hp, &load) {
            load.sequences * (strata_model::profile::STATE_COPIES_PER_SEQ - 1)
        } else {
            0
        },
    };
    let (engine, losses) = Engine::start(engine_config);
    let stage0 = &stages[0].worker;
    let epoch = engine
        .attach(pool.stage_links(&stages).await)
        .await
        .map_err(|e| {
            ServeError::Load(format!(
                "opening the data stream to stage 0 ({}): {}",
                stage0.addr,
                e.message()
            ))
        })?;
    engine
        .stats()
        .set_stages(stage_views(&stages, config.kv_type));
    let supervisor = tokio::spawn(supervise(
        pool,
        engine.clone(),
        losses,
        Attached {
            stages,
            epoch,
            survey,
        },
        |e| tracing::info!("{}", describe(e, 0)),
    ));
    let name = config.alias.clone().unwrap_or_else(|| model.name.clone());
    Ok((
        Ready {
            name,
            engine,
            grammars: Arc::new(crate::api::structured::GrammarCheck::new(
                model.tokenizer.clone(),
            )),
            tokenizer: model.tokenizer,
            template: Arc::new(model.template),
        },
        supervisor,
    ))
}

/// Whether a prompt resumes from state snapshots, not from blocks alone,
/// on some stage (the worker's `Stage::resumes_from_snapshots`): the model
/// has recurrent layers, or a sliding-window layer that keeps a ring rather
/// than its whole context.
fn resumes_from_snapshots(
    spec: &strata_model::arch::ModelSpec,
    load: &strata_model::profile::StageLoad,
) -> bool {
    let rings = (0..spec.n_layers)
        .filter_map(|il| spec.attention(il)?.window)
        .any(|w| load.window_blocks(w).is_some_and(|b| b < load.kv_blocks()));
    spec.recurrent_state_bytes_per_seq() > 0 || rings
}

/// One line for `/health` while loading.
pub fn describe(e: &LoadEvent, n_stages: usize) -> String {
    // Stage k of n while starting; a rebuild does not know n up front.
    let stage = |k: &usize| match n_stages {
        0 => format!("stage {}", k + 1),
        n => format!("stage {}/{n}", k + 1),
    };
    match e {
        LoadEvent::Pushing {
            stage: k,
            addr,
            sent_bytes,
            total_bytes,
        } => format!(
            "{} ({addr}): sending the slice, {} of {} MiB",
            stage(k),
            sent_bytes >> 20,
            total_bytes >> 20
        ),
        LoadEvent::Progress {
            stage: k,
            addr,
            progress,
        } => format!("{} ({addr}): {}", stage(k), progress.message),
    }
}
