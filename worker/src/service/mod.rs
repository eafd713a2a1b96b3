//! The worker's gRPC service (`proto/worker.proto`): loads a slice onto a
//! backend, runs batch frames through it and forwards hidden states to the
//! next stage itself; the last stage samples and replies with tokens.
//!
//! - [`WorkerService::start`] spawns the compute thread (generic over the
//!   [`Backend`]; the CPU backend now, CUDA later) and scans `--model-dir`.
//! - [`WorkerService::serve`] serves it on a listener, every RPC behind the
//!   cluster token, with raised message limits and HTTP/2 windows.

mod downstream;
pub mod frames;
mod grammars;
pub mod kv_sessions;
mod local_stages;
mod locate;
mod peer_links;
mod push;
mod reply_routes;
mod serve_box;
mod stage_links;
mod stage_thread;
pub mod system;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};

use strata_kernels::Backend;
use strata_model::arch::ModelSpec;
use strata_model::profile::KvType;
use strata_model::slice_hash::SliceHashes;
use strata_proto::link::{CONNECTION_WINDOW_BYTES, STREAM_WINDOW_BYTES};
use strata_proto::transport::{DataPlane, InboundFrames, ReplyStream, TransportKind};
use strata_proto::v1::{self, worker_server};
use strata_proto::{NodeIdentity, TokenCheck, Trust, MAX_MESSAGE_BYTES};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

pub use local_stages::LocalStage;
pub use serve_box::serve_blocking;
pub use stage_thread::Snapshot;

use crate::slice_cache::{self, ModelDir, SliceCache};
use crate::stage::LayerRange;
use downstream::Downstream;
use stage_links::{Handoff, NextTarget, StageTx};
use stage_thread::{Command, FrameOut, LoadJob};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Setup(String),
    #[error("serving: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The most an `Echo` sends back (link measurement needs about 1 MiB).
const MAX_ECHO_REPLY_BYTES: usize = 4 << 20;

/// How a worker is started (`strata worker` flags).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The cluster token every RPC must carry.
    pub token: String,
    /// Caps the memory offered and what a slice may take.
    pub mem_budget_bytes: Option<u64>,
    /// Scanned at start for GGUFs by digest.
    pub model_dir: Option<PathBuf>,
    /// Single model files this worker may also read (the embedded worker's).
    pub model_files: Vec<PathBuf>,
    /// Where pushed slices are kept, and how many bytes of them at most.
    pub cache_dir: PathBuf,
    pub cache_max_bytes: u64,
    pub threads: usize,
    /// Compute on a thread pool of `threads` threads of its own
    /// (`Some(true)`) or on the process-wide one (`Some(false)`: several
    /// stages share the host's threads). `None`: its own for a CPU stage,
    /// the process's for a GPU stage, whose few host loops need no more.
    pub own_thread_pool: Option<bool>,
    /// The certificate it serves TLS with; `None` serves plaintext
    /// (`--insecure`).
    pub identity: Option<Arc<NodeIdentity>>,
    /// Where kept KV blocks go on disk (sessions that survive a restart);
    /// `None` keeps them in memory only.
    pub kv_disk: Option<kv_sessions::KvDiskConfig>,
}

struct Shared {
    config: WorkerConfig,
    /// (total, available) bytes: the device's for a GPU backend, else the host's.
    memory: Box<dyn Fn() -> Option<(u64, u64)> + Send + Sync>,
    backend_name: String,
    device_name: String,
    matvec_bytes_per_second: f64,
    models: ModelDir,
    cache: SliceCache,
    stage: Mutex<StageTx>,
    snapshot: Arc<Mutex<Snapshot>>,
    downstream: tokio::sync::RwLock<Option<Arc<Downstream>>>,
    /// The coordinator's direct lines for replies (`Replies`).
    reply_routes: Arc<reply_routes::ReplyRoutes>,
    /// Slice hashes of files already checked.
    hashes: SliceHashes,
    /// One LoadSlice at a time.
    loading: tokio::sync::Mutex<()>,
    /// Frames sent on to the next stage in this process / over the network.
    frames_sent_local: AtomicU64,
    frames_sent_remote: AtomicU64,
    frames_sent_quic: AtomicU64,
    /// ... and on a TCP data link, by the compute thread itself.
    frames_sent_tcp: Arc<AtomicU64>,
    /// A load or unload is queued: the compute thread stops waiting on a
    /// next stage that reads nothing (`stage_links.rs`).
    reloading: Arc<AtomicBool>,
    /// The data plane is also served over QUIC (`Capabilities.serves_quic`).
    serves_quic: AtomicBool,
    /// The ports of the other stages this process serves (`Capabilities.sibling_ports`).
    sibling_ports: Mutex<Vec<u32>>,
    /// The port `serve` listens on (`Capabilities.listen_port`).
    listen_port: AtomicU32,
}

/// The `Worker` service. Cheap to clone.
#[derive(Clone)]
pub struct WorkerService {
    shared: Arc<Shared>,
}

impl WorkerService {
    /// Scans the model dir, measures the host and starts the compute thread.
    pub fn start<B, F>(config: WorkerConfig, make_backend: F) -> Result<Self, ServiceError>
    where
        B: Backend + 'static,
        F: Fn() -> B + Send + 'static,
    {
        let mut models = match &config.model_dir {
            Some(d) => {
                ModelDir::scan(d).map_err(|e| ServiceError::Setup(format!("--model-dir: {e}")))?
            }
            None => ModelDir::default(),
        };
        models
            .add_files(&config.model_files)
            .map_err(|e| ServiceError::Setup(e.to_string()))?;
        // `name()` is like "cpu (16 threads, avx2)": the kind goes in
        // `backend`, the rest with the device name.
        let probe = make_backend();
        let full_name = probe.name();
        let backend_name = full_name
            .split_whitespace()
            .next()
            .unwrap_or("unknown")
            .to_string();
        let snapshot = Arc::new(Mutex::new(Snapshot {
            status: v1::health_reply::Status::Idle as i32,
            message: "idle".into(),
            ..Default::default()
        }));
        // A CPU stage computes on a pool it belongs to unless told to share
        // (`stage_thread::spawn` says why).
        let own_pool = config.own_thread_pool.unwrap_or(backend_name == "cpu");
        let pool_threads = own_pool.then_some(config.threads.max(1));
        let frames_sent_tcp = Arc::new(AtomicU64::new(0));
        let reply_routes = Arc::<reply_routes::ReplyRoutes>::default();
        let reloading = Arc::new(AtomicBool::new(false));
        let stage = stage_thread::spawn(
            make_backend,
            snapshot.clone(),
            pool_threads,
            frames_sent_tcp.clone(),
            reply_routes.clone(),
            reloading.clone(),
        )
        .map_err(|e| ServiceError::Setup(format!("starting the compute thread: {e}")))?;
        let cache = SliceCache::new(config.cache_dir.clone(), config.cache_max_bytes);
        Ok(WorkerService {
            shared: Arc::new(Shared {
                config,
                device_name: if backend_name == "cpu" {
                    format!("{} [{full_name}]", system::cpu_name())
                } else {
                    full_name.clone()
                },
                backend_name,
                matvec_bytes_per_second: probe
                    .device_bandwidth()
                    .unwrap_or_else(system::measure_read_bandwidth),
                memory: Box::new(move || probe.device_memory_bytes().or_else(system::memory_bytes)),
                models,
                cache,
                stage: Mutex::new(stage),
                snapshot,
                downstream: tokio::sync::RwLock::new(None),
                reply_routes,
                hashes: SliceHashes::default(),
                loading: tokio::sync::Mutex::new(()),
                frames_sent_local: AtomicU64::new(0),
                frames_sent_remote: AtomicU64::new(0),
                frames_sent_quic: AtomicU64::new(0),
                frames_sent_tcp,
                reloading,
                serves_quic: AtomicBool::new(false),
                sibling_ports: Mutex::default(),
                listen_port: AtomicU32::new(0),
            }),
        })
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ServiceError> {
        let check = TokenCheck::new(&self.shared.config.token);
        self.start_handoffs();
        if let Ok(addr) = listener.local_addr() {
            self.shared.listen_port.store(addr.port().into(), Relaxed);
        }
        let tls = match &self.shared.config.identity {
            Some(id) => Some(
                strata_proto::tls::server_config(id, &self.shared.config.token)
                    .map_err(|e| ServiceError::Setup(format!("TLS: {e}")))?,
            ),
            None => None,
        };
        // QUIC on the same port number, over UDP: TLS workers only (QUIC
        // has no plaintext), and a worker whose UDP port is taken still
        // serves gRPC.
        let quic = match (&self.shared.config.identity, listener.local_addr()) {
            (Some(id), Ok(addr)) => {
                match strata_proto::transport::quic::bind(addr, id, &self.shared.config.token) {
                    Ok(endpoint) => {
                        self.shared.serves_quic.store(true, Relaxed);
                        let plane: Arc<dyn DataPlane> = Arc::new(self.clone());
                        tokio::spawn(strata_proto::transport::quic::serve(
                            endpoint.clone(),
                            plane,
                        ));
                        Some(endpoint)
                    }
                    Err(e) => {
                        tracing::warn!("no QUIC data plane ({e}): gRPC only");
                        None
                    }
                }
            }
            _ => None,
        };
        // Closing the endpoint ends its accept loop and its connections,
        // however the gRPC server ends.
        let close_quic = || {
            if let Some(endpoint) = &quic {
                endpoint.close(0u32.into(), b"worker stopping");
            }
        };
        let shutdown = async {
            shutdown.await;
            close_quic();
        };
        let on_link = self.on_link();
        let svc = worker_server::WorkerServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let svc = tonic::service::interceptor::InterceptedService::new(svc, check);
        let router = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .http2_adaptive_window(Some(true))
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .add_service(svc);
        let served = match tls {
            Some(config) => {
                router
                    .serve_with_incoming_shutdown(
                        strata_proto::accept::tls_incoming(listener, config, Some(on_link)),
                        shutdown,
                    )
                    .await
            }
            None => {
                router
                    .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
                    .await
            }
        };
        close_quic();
        served?;
        Ok(())
    }

    /// Binds `listen`, serves until Ctrl-C on a runtime of its own (for the
    /// `strata worker` binary).
    pub fn serve_blocking(self, listen: std::net::SocketAddr) -> Result<(), ServiceError> {
        serve_box::serve_blocking(vec![(self, listen)])
    }

    /// Says that this process also serves stages on `ports` of this host
    /// (`strata worker --gpus`): a coordinator that reaches this one adds them.
    pub fn set_sibling_ports(&self, ports: Vec<u16>) {
        *self
            .shared
            .sibling_ports
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = ports.into_iter().map(u32::from).collect();
    }

    /// What Health reports, for in-process callers.
    pub fn snapshot(&self) -> Snapshot {
        self.shared
            .snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes what the compute thread hands back (`stage_links::Handoff`)
    /// on a task of its own, which holds the service weakly so that it can
    /// still stop.
    fn start_handoffs(&self) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        if self.tell(Command::Handoff(tx)).is_err() {
            return;
        }
        let weak = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            // Replies that come back up for a linked frame with no route go
            // back on its link, through the compute thread.
            let mut sinks: std::collections::HashMap<u64, downstream::ReplySink> =
                Default::default();
            while let Some(h) = rx.recv().await {
                let Some(this) = Self::upgrade(&weak) else {
                    break;
                };
                match h {
                    Handoff::Deliver {
                        batch_id,
                        route,
                        out,
                        back,
                    } => {
                        // Only a frame with no route gets its reply back
                        // on its link (a coordinator's); one with a route
                        // and no line has nowhere to go.
                        let back = if route == 0 { back } else { 0 };
                        let sink = sinks
                            .entry(back)
                            .or_insert_with(|| this.link_sink(back))
                            .clone();
                        this.deliver_out(batch_id, route, out, &sink).await
                    }
                    Handoff::Released { link, seqs } => {
                        sinks.remove(&link);
                        if !seqs.is_empty() {
                            tokio::spawn(async move {
                                this.release_closed_stream(seqs, "a TCP link").await
                            });
                        }
                    }
                    Handoff::Lost { routes, error } => {
                        for route in routes {
                            let lost = stage_thread::lost_reply(0, error.clone());
                            let _ = this.shared.reply_routes.send(route, lost).await;
                        }
                    }
                }
            }
        });
    }

    /// Where replies for frames of link `back` go: back on it.
    fn link_sink(&self, back: u64) -> downstream::ReplySink {
        let (sink, mut replies) = mpsc::channel::<Result<v1::StageReply, Status>>(64);
        let weak = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            while let Some(Ok(reply)) = replies.recv().await {
                let Some(this) = Self::upgrade(&weak) else {
                    break;
                };
                let _ = this.tell(Command::Reply {
                    route: 0,
                    back,
                    reply,
                });
            }
        });
        sink
    }

    fn upgrade(weak: &Weak<Shared>) -> Option<Self> {
        weak.upgrade().map(|shared| WorkerService { shared })
    }

    /// Hands a TCP data link from the stage before to the compute thread.
    fn on_link(&self) -> strata_proto::accept::OnLink {
        let weak = Arc::downgrade(&self.shared);
        Arc::new(move |tls| {
            let Some(this) = Self::upgrade(&weak) else {
                return;
            };
            let attached = strata_proto::transport::tcp::LinkConn::from_accepted(tls)
                .map_err(|e| e.to_string())
                .and_then(|conn| {
                    this.tell(Command::Attach(Box::new(conn)))
                        .map_err(|e| e.message().to_string())
                });
            if let Err(e) = attached {
                tracing::warn!("a TCP data link from the stage before: {e}");
            }
        })
    }

    /// Queues a command that has no answer.
    fn tell(&self, cmd: Command) -> Result<(), Status> {
        self.shared
            .stage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(cmd)
            .map_err(|_| Status::internal("the compute thread has stopped"))
    }

    async fn command<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Status> {
        self.queue(make)?
            .await
            .map_err(|_| Status::internal("the compute thread dropped a request"))
    }

    /// Queues a command on the compute thread; its result comes on the
    /// receiver returned.
    fn queue<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<oneshot::Receiver<T>, Status> {
        let (tx, rx) = oneshot::channel();
        self.tell(make(tx))?;
        Ok(rx)
    }

    /// Memory this worker can still offer: the budget (or what the host has
    /// available) less the loaded slice.
    fn free_bytes(&self) -> (u64, u64) {
        let (total, available) = (self.shared.memory)().unwrap_or((0, 0));
        let used = {
            let s = self.snapshot();
            s.weight_bytes + s.kv_bytes + s.scratch_bytes
        };
        match self.shared.config.mem_budget_bytes {
            Some(b) => (b, b.saturating_sub(used).min(available + used)),
            None => (total, available),
        }
    }

    async fn run_load(
        &self,
        req: v1::LoadSliceRequest,
        progress: &mpsc::Sender<Result<v1::LoadProgress, Status>>,
    ) -> Result<(), Status> {
        let _one = self.shared.loading.lock().await;
        let r = req
            .layers
            .ok_or_else(|| Status::invalid_argument("LoadSlice without a layer range"))?;
        let range = LayerRange {
            first: r.first as usize,
            end: r.end as usize,
        };
        if range.first >= range.end {
            return Err(Status::invalid_argument(format!(
                "empty layer range {}..{}",
                r.first, r.end
            )));
        }
        let kv_type = kv_type_from_proto(req.kv_type)?;
        let act_dtype = v1::ActDtype::try_from(req.act_dtype)
            .map_err(|_| Status::invalid_argument("unknown act_dtype"))?;
        let next_stage = self.next_stage(&req.next_stage_addr)?;
        let (next_transport, next_process) = (req.next_transport, req.next_process_id);
        let ctx_tokens = usize::try_from(req.ctx_tokens)
            .map_err(|_| Status::invalid_argument("ctx_tokens too large"))?;
        if ctx_tokens == 0 {
            return Err(Status::invalid_argument("ctx_tokens is 0"));
        }
        let bound = |planned: u64, ceiling: usize| match planned {
            0 => ceiling,
            n => (n as usize).min(ceiling),
        };
        let limits = frames::FrameLimits {
            batch_tokens: bound(req.max_batch_tokens.into(), frames::MAX_FRAME_TOKENS),
            seq_tokens: bound(req.max_seq_tokens, ctx_tokens),
        };
        let send = |phase: v1::load_progress::Phase, message: String, p: v1::LoadProgress| {
            let msg = v1::LoadProgress {
                phase: phase as i32,
                message,
                ..p
            };
            let progress = progress.clone();
            async move {
                let _ = progress.send(Ok(msg)).await;
            }
        };
        use v1::load_progress::Phase;
        let total = (range.end - range.first) as u32;
        send(
            Phase::Locating,
            format!("looking for {}", req.model_digest),
            Default::default(),
        )
        .await;

        // Find, open and check the file off the async threads (hashing a
        // slice reads all of it the first time).
        let shared = self.shared.clone();
        let digest = req.model_digest.clone();
        let model_path = req.model_path.clone();
        let slice_hash = req.slice_hash.clone();
        let (file, source) = tokio::task::spawn_blocking(move || {
            locate::locate(&shared, &digest, &model_path, range, &slice_hash)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        let hp = ModelSpec::from_gguf(&file)
            .map_err(|e| Status::invalid_argument(format!("{}: {e}", source.display())))?;
        if range.end > hp.n_layers {
            return Err(Status::invalid_argument(format!(
                "layers {}..{} past the model's {}",
                range.first, range.end, hp.n_layers
            )));
        }
        let load =
            slice_cache::stage_load(ctx_tokens, limits.seq_tokens, limits.batch_tokens, kv_type);
        let memory = slice_cache::slice_memory(&file, &hp, range, &load);
        let (weight_bytes, kv_bytes) = (memory.weight_bytes, memory.kv_bytes);
        let need = memory.total_bytes;
        // A new load replaces the current slice, so its memory counts as free.
        let (_, available) = (self.shared.memory)().unwrap_or((u64::MAX, u64::MAX));
        let current = {
            let s = self.snapshot();
            s.weight_bytes + s.kv_bytes + s.scratch_bytes
        };
        let (limit, what) = match self.shared.config.mem_budget_bytes {
            Some(b) => (b, "--mem-budget"),
            None => (available.saturating_add(current), "available memory"),
        };
        if need > limit {
            return Err(Status::resource_exhausted(format!(
                "layers {}..{} need {need} bytes ({} MiB weights + {} MiB KV for {} tokens + {} MiB scratch for batches of {} tokens) but {what} is {limit} bytes",
                range.first,
                range.end,
                weight_bytes >> 20,
                kv_bytes >> 20,
                load.kv_tokens_allocated(),
                memory.scratch_bytes >> 20,
                load.scratch_tokens(),
            )));
        }
        let sizes = v1::LoadProgress {
            layers_total: total,
            source_path: source.display().to_string(),
            weight_bytes,
            kv_bytes,
            ..Default::default()
        };
        send(
            Phase::Loading,
            format!(
                "loading layers {}..{} from {}",
                range.first,
                range.end,
                source.display()
            ),
            sizes.clone(),
        )
        .await;
        *self.shared.downstream.write().await = None;
        self.shared.reloading.store(true, Relaxed);
        let job = LoadJob {
            file,
            source,
            digest: req.model_digest.clone(),
            range,
            load,
            act_dtype,
            limits,
            weight_bytes,
            kv_bytes,
            scratch_bytes: memory.scratch_bytes,
            kv_disk: self.shared.config.kv_disk.clone(),
        };
        self.command(|tx| Command::Load(Box::new(job), tx))
            .await?
            .map_err(Status::internal)?;
        send(
            Phase::Loading,
            "layers loaded".into(),
            v1::LoadProgress {
                layers_done: total,
                ..sizes.clone()
            },
        )
        .await;

        if let Some((addr, trust)) = next_stage {
            send(
                Phase::ConnectingNext,
                format!("opening the data stream to {addr}"),
                sizes.clone(),
            )
            .await;
            let transport = TransportKind::from_proto(next_transport);
            let pin = trust.pin(&addr).ok().flatten();
            let next = Arc::new(Downstream::new(
                addr.clone(),
                self.shared.config.token.clone(),
                trust,
                transport,
                next_process,
                self.shared.reply_routes.clone(),
            ));
            // A TCP data link is the compute thread's own; the gRPC stream
            // stays for what it cannot send (frames without a reply route)
            // and as the way back if the link cannot open.
            if transport == TransportKind::Tcp && !next.is_local() {
                match pin {
                    Some(pin) => self.tell(Command::NextLink(Some(NextTarget {
                        addr: addr.clone(),
                        token: self.shared.config.token.clone(),
                        pin,
                    })))?,
                    None => tracing::warn!(
                        "a TCP data link asked for, but the link to {addr} is plaintext (--insecure); frames go over gRPC"
                    ),
                }
            }
            // The next stage may load after this one: open lazily if it is not up yet.
            if let Err(e) = next.open().await {
                tracing::info!(
                    "next stage not reachable yet ({e}); will connect on the first frame"
                );
            }
            *self.shared.downstream.write().await = Some(next);
        }
        send(
            Phase::Ready,
            "ready".into(),
            v1::LoadProgress {
                layers_done: total,
                ..sizes
            },
        )
        .await;
        Ok(())
    }

    /// The next stage a LoadSlice names, and how to reach it. A TLS worker
    /// connects onward only to the certificate the coordinator pinned.
    fn next_stage(&self, spec: &str) -> Result<Option<(String, Trust)>, Status> {
        if spec.is_empty() {
            return Ok(None);
        }
        let (addr, pin) = strata_proto::parse_peer(spec)
            .map_err(|e| Status::invalid_argument(format!("next stage: {e}")))?;
        let trust = match pin {
            Some(pin) => Trust::Pinned([(addr.clone(), pin)].into()),
            None if self.shared.config.identity.is_none() => Trust::Insecure,
            None => {
                return Err(Status::invalid_argument(format!(
                    "next stage {addr} has no fingerprint: this worker uses TLS and connects \
                     only to a pinned peer (HOST:PORT#sha256:<hex>)"
                )))
            }
        };
        Ok(Some((addr, trust)))
    }

    /// Sends a frame's result on to the next stage, or its reply back.
    async fn deliver(&self, pending: PendingFrame, sink: &downstream::ReplySink) {
        let PendingFrame {
            batch_id,
            route,
            out,
        } = pending;
        let out = match out {
            Ok(rx) => rx.await.unwrap_or_else(|_| {
                let e = "the compute thread dropped a request".to_string();
                FrameOut::Reply(stage_thread::lost_reply(batch_id, e))
            }),
            Err(e) => FrameOut::Reply(stage_thread::lost_reply(batch_id, e.message().to_string())),
        };
        self.deliver_out(batch_id, route, out, sink).await;
    }

    /// [`Self::deliver`] once the result is there.
    async fn deliver_out(
        &self,
        batch_id: u64,
        route: u64,
        out: FrameOut,
        sink: &downstream::ReplySink,
    ) {
        let reply = match out {
            // The compute thread wrote it on the TCP link.
            FrameOut::Sent => return,
            FrameOut::Reply(r) => r,
            FrameOut::Next(next_frame) => {
                let next = self.shared.downstream.read().await.clone();
                let result = match next {
                    Some(d) => {
                        let sent = d.send(next_frame, sink.clone()).await;
                        if let Ok(quic) = sent {
                            let counter = if d.is_local() {
                                &self.shared.frames_sent_local
                            } else {
                                &self.shared.frames_sent_remote
                            };
                            counter.fetch_add(1, Relaxed);
                            if quic {
                                self.shared.frames_sent_quic.fetch_add(1, Relaxed);
                            }
                        }
                        sent.map(|_| ())
                    }
                    None => Err("this stage is not the last but has no next stage address".into()),
                };
                tracing::debug!(target: "strata::hop", batch_id, "sent on");
                match result {
                    Ok(()) => return,
                    Err(error) => stage_thread::lost_reply(batch_id, error),
                }
            }
        };
        tracing::debug!(target: "strata::hop", batch_id, "reply");
        // A TCP line is the compute thread's to write.
        if route != 0 && self.shared.reply_routes.has_tcp_line(route) {
            let _ = self.tell(Command::Reply {
                route,
                back: 0,
                reply,
            });
            return;
        }
        // Straight to the coordinator when it opened a line, else back up.
        if let Err(reply) = self.shared.reply_routes.send(route, reply).await {
            let _ = sink.send(Ok(reply)).await;
        }
    }
}

/// A frame queued on the compute thread, waiting for its result.
struct PendingFrame {
    batch_id: u64,
    /// Where its reply goes (`BatchHeader.reply_route`; 0: back up).
    route: u64,
    out: Result<oneshot::Receiver<FrameOut>, Status>,
}

impl WorkerService {
    /// Runs a stream of frames (a `Forward` stream, or a previous stage of
    /// this process) on a task of its own; their replies come on the stream
    /// returned, or on reply routes.
    fn serve_frames<S>(&self, mut inbound: S) -> ReceiverStream<Result<v1::StageReply, Status>>
    where
        S: Stream<Item = Result<v1::BatchFrame, Status>> + Send + Unpin + 'static,
    {
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        // Frames go to the compute thread as they arrive, and a task of
        // their own sends each result on, in order: the compute thread
        // starts the next micro-batch while the last one's hidden states
        // are still on their way.
        let (pending_tx, mut pending_rx) = mpsc::channel::<PendingFrame>(64);
        let sender = self.clone();
        let sink = tx;
        let deliveries = tokio::spawn(async move {
            while let Some(pending) = pending_rx.recv().await {
                sender.deliver(pending, &sink).await;
            }
        });
        tokio::spawn(async move {
            // Sequences belong to the stream that started them: when it ends
            // (the coordinator went away), their KV is freed on every stage.
            let mut seqs = std::collections::BTreeSet::new();
            loop {
                match inbound.next().await {
                    Some(Ok(frame)) => {
                        let (batch_id, route) = frame
                            .header
                            .as_ref()
                            .map_or((0, 0), |h| (h.batch_id, h.reply_route));
                        tracing::debug!(target: "strata::hop", batch_id, "received");
                        if let Some(h) = &frame.header {
                            seqs.extend(h.entries.iter().map(|e| e.seq_id));
                        }
                        let out = this.queue(|tx| Command::Forward(frame, tx));
                        let pending = PendingFrame {
                            batch_id,
                            route,
                            out,
                        };
                        if pending_tx.send(pending).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                    Some(Err(e)) => {
                        tracing::debug!("upstream data stream ended: {}", e.message());
                        break;
                    }
                }
            }
            // Every result is sent on before the release goes after them.
            drop(pending_tx);
            let _ = deliveries.await;
            let seqs = seqs.into_iter().collect();
            this.release_closed_stream(seqs, "gRPC, QUIC or in memory")
                .await;
        });
        ReceiverStream::new(rx)
    }

    /// Frees the sequences a data stream (gRPC, QUIC or in memory, or a TCP
    /// link) left when it closed, here and on the later stages.
    async fn release_closed_stream(&self, seqs: Vec<u64>, what: &str) {
        if seqs.is_empty() {
            return;
        }
        tracing::info!(
            "data stream closed: releasing {} sequences ({what})",
            seqs.len()
        );
        let req = v1::ReleaseRequest {
            seq_ids: seqs,
            ..Default::default()
        };
        if let Err(e) = self.release_everywhere(req).await {
            tracing::warn!(
                "releasing a closed data stream's sequences ({what}): {}",
                e.message()
            );
        }
    }

    /// Frees sequences here and on every later stage; returns how many
    /// stages freed them. Boxed: a next stage in this process comes back
    /// here (`Downstream::release`).
    fn release_everywhere(
        &self,
        req: v1::ReleaseRequest,
    ) -> Pin<Box<dyn Future<Output = Result<u32, Status>> + Send + '_>> {
        Box::pin(async move {
            self.command(|tx| Command::Release(req.clone(), tx)).await?;
            let next = self.shared.downstream.read().await.clone();
            let after = match next {
                Some(d) => d.release(req).await.map_err(Status::unavailable)?,
                None => 0,
            };
            Ok(1 + after)
        })
    }
}

#[tonic::async_trait]
impl worker_server::Worker for WorkerService {
    async fn capabilities(
        &self,
        _: Request<v1::CapabilitiesRequest>,
    ) -> Result<Response<v1::CapabilitiesReply>, Status> {
        let (total, free) = self.free_bytes();
        let saved_layers = self.saved_layers().await;
        Ok(Response::new(v1::CapabilitiesReply {
            backend: self.shared.backend_name.clone(),
            device_name: self.shared.device_name.clone(),
            total_memory_bytes: total,
            free_memory_bytes: free,
            matvec_bytes_per_second: self.shared.matvec_bytes_per_second,
            worker_version: env!("CARGO_PKG_VERSION").to_string(),
            threads: self.shared.config.threads as u32,
            model_digests: self.shared.models.digests(),
            serves_quic: self.shared.serves_quic.load(Relaxed),
            sibling_ports: self
                .shared
                .sibling_ports
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            process_id: local_stages::process_id(),
            listen_port: self.shared.listen_port.load(Relaxed),
            saved_layers,
        }))
    }

    async fn echo(&self, req: Request<v1::EchoRequest>) -> Result<Response<v1::EchoReply>, Status> {
        let want = req.into_inner().reply_bytes as usize;
        if want > MAX_ECHO_REPLY_BYTES {
            return Err(Status::invalid_argument(format!(
                "reply_bytes {want} is over the {MAX_ECHO_REPLY_BYTES} an echo sends"
            )));
        }
        Ok(Response::new(v1::EchoReply {
            payload: vec![0; want],
        }))
    }

    async fn measure_links(
        &self,
        req: Request<v1::MeasureLinksRequest>,
    ) -> Result<Response<v1::MeasureLinksReply>, Status> {
        self.peer_links(req.into_inner()).await.map(Response::new)
    }

    type LoadSliceStream = ReceiverStream<Result<v1::LoadProgress, Status>>;

    async fn load_slice(
        &self,
        req: Request<v1::LoadSliceRequest>,
    ) -> Result<Response<Self::LoadSliceStream>, Status> {
        let req = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.run_load(req, &tx).await {
                tracing::warn!("LoadSlice failed: {}", e.message());
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn push_slice(
        &self,
        req: Request<Streaming<v1::SliceChunk>>,
    ) -> Result<Response<v1::PushSliceReply>, Status> {
        push::receive(self.shared.cache.clone(), req.into_inner())
            .await
            .map(Response::new)
    }

    async fn unload(
        &self,
        _: Request<v1::UnloadRequest>,
    ) -> Result<Response<v1::UnloadReply>, Status> {
        *self.shared.downstream.write().await = None;
        self.shared.reloading.store(true, Relaxed);
        self.command(Command::Unload).await?;
        Ok(Response::new(v1::UnloadReply {}))
    }

    async fn health(
        &self,
        _: Request<v1::HealthRequest>,
    ) -> Result<Response<v1::HealthReply>, Status> {
        let s = self.snapshot();
        Ok(Response::new(v1::HealthReply {
            status: s.status,
            message: s.message,
            model_digest: s.digest,
            layers: s.range.map(|r| v1::LayerRange {
                first: r.first as u32,
                end: r.end as u32,
            }),
            kv_blocks_used: s.kv_blocks_used,
            kv_blocks_free: s.kv_blocks_free,
            live_sequences: s.live_sequences,
            state_slots_used: s.state_slots_used,
            state_slots: s.state_slots,
            kv_blocks_cached: s.kv_blocks_cached,
            frames_run: s.frames_run,
            tokens_run: s.tokens_run,
            compute_seconds: s.compute_seconds,
            frames_sent_local: self.shared.frames_sent_local.load(Relaxed),
            frames_sent_remote: self.shared.frames_sent_remote.load(Relaxed)
                + self.shared.frames_sent_tcp.load(Relaxed),
            frames_sent_quic: self.shared.frames_sent_quic.load(Relaxed),
            frames_sent_tcp: self.shared.frames_sent_tcp.load(Relaxed),
            kv_block_tokens: strata_kernels::KV_BLOCK_TOKENS as u64,
        }))
    }

    async fn disk_prefixes(
        &self,
        _: Request<v1::DiskPrefixesRequest>,
    ) -> Result<Response<v1::DiskPrefixesReply>, Status> {
        let own = self.command(Command::DiskPrefixes).await?;
        let Some(own) = own else {
            return Ok(Response::new(v1::DiskPrefixesReply::default()));
        };
        let next = self.shared.downstream.read().await.clone();
        let joined = match next {
            Some(d) => {
                let after = d.disk_prefixes().await.map_err(Status::unavailable)?;
                kv_sessions::join_prefixes(own, after)
            }
            None => own,
        };
        Ok(Response::new(joined))
    }

    async fn release(
        &self,
        req: Request<v1::ReleaseRequest>,
    ) -> Result<Response<v1::ReleaseReply>, Status> {
        let stages = self.release_everywhere(req.into_inner()).await?;
        Ok(Response::new(v1::ReleaseReply { stages }))
    }

    type ForwardStream = ReceiverStream<Result<v1::StageReply, Status>>;
    type RepliesStream = reply_routes::ReplyLine;

    async fn replies(
        &self,
        req: Request<v1::RepliesRequest>,
    ) -> Result<Response<Self::RepliesStream>, Status> {
        Ok(Response::new(DataPlane::replies(
            self,
            req.into_inner().route,
        )?))
    }

    async fn forward(
        &self,
        req: Request<Streaming<v1::BatchFrame>>,
    ) -> Result<Response<Self::ForwardStream>, Status> {
        Ok(Response::new(self.serve_frames(req.into_inner())))
    }
}

/// The data plane over QUIC: the same frame loop and reply lines as the
/// gRPC `Forward` and `Replies` streams.
impl DataPlane for WorkerService {
    fn forward(&self, frames: InboundFrames) -> ReplyStream {
        Box::pin(self.serve_frames(frames))
    }

    fn replies(&self, route: u64) -> Result<ReplyStream, Status> {
        if route == 0 {
            return Err(Status::invalid_argument("route 0 means no route"));
        }
        Ok(self.shared.reply_routes.open(route))
    }
}

impl WorkerService {
    /// The layers whose KV blocks `--kv-cache-dir` holds, per model and KV
    /// type (none without a directory). Listed off the async threads: a
    /// cold disk may take a while.
    async fn saved_layers(&self) -> Vec<v1::SavedLayers> {
        let Some(disk) = &self.shared.config.kv_disk else {
            return Vec::new();
        };
        let dir = disk.dir.clone();
        let listed = tokio::task::spawn_blocking(move || crate::kv_disk::saved_layers(&dir));
        listed
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|saved| {
                let kv_type = match saved.kv_type {
                    KvType::F16 => v1::KvType::F16,
                    KvType::Q8_0 => v1::KvType::Q80,
                    KvType::Q4_0 => v1::KvType::Q40,
                };
                v1::SavedLayers {
                    model_digest: saved.digest,
                    kv_type: kv_type as i32,
                    layers: saved.layers,
                }
            })
            .collect()
    }
}

/// The KV type a `LoadSlice` asks for.
fn kv_type_from_proto(kv_type: i32) -> Result<KvType, Status> {
    match v1::KvType::try_from(kv_type) {
        Ok(v1::KvType::F16) => Ok(KvType::F16),
        Ok(v1::KvType::Q80) => Ok(KvType::Q8_0),
        Ok(v1::KvType::Q40) => Ok(KvType::Q4_0),
        Err(_) => Err(Status::invalid_argument(format!(
            "LoadSlice.kv_type {kv_type} is not f16, q8_0 or q4_0"
        ))),
    }
}
