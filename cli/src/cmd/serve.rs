//! `strata serve`: the OpenAI API over a model placed on workers; with no
//! `--worker`, over workers started in this process (one per `--devices`
//! entry).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use strata_coordinator::cluster::LoadEvent;
use strata_coordinator::serve::{serve, LoadReporter, ServeConfig};
use strata_coordinator::swap::{
    serve_models, Defaults, LaunchFuture, LaunchedWorker, ModelSwap, SwapConfig, WorkerLauncher,
    Workers,
};
use strata_proto::v1;
use strata_worker::service::{LocalStage, WorkerConfig};

use super::devices::StageShare;

#[derive(clap::Args)]
pub struct Args {
    /// GGUF model file (first shard of a split model).
    #[arg(
        long,
        short = 'm',
        required_unless_present = "config",
        conflicts_with = "config"
    )]
    pub model: Option<PathBuf>,
    /// Several models, each loaded on its first request: a TOML file of
    /// `[models.NAME]` entries (file, aliases, ctx_size, parallel,
    /// cache_type, ttl, workers) and `[groups.NAME] members = [...]`
    /// (README: "Several models"). The flags here are the defaults.
    #[arg(long, conflicts_with = "alias")]
    pub config: Option<PathBuf>,
    /// Workers to place the model on (none: one in this process).
    #[command(flatten)]
    pub links: super::links::LinkArgs,
    /// File holding the cluster token the workers were started with.
    #[arg(long, conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// The cluster token itself (prefer --token-file: argv is visible to other users).
    #[arg(long)]
    pub token: Option<String>,
    /// Address of the HTTP API; loopback unless told otherwise.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Context per sequence, in tokens (capped at the model's).
    #[arg(long, short = 'c', default_value_t = 4096)]
    pub ctx_size: usize,
    /// Sequences served at once (each gets --ctx-size of KV cache).
    #[arg(long, short = 'n', visible_alias = "np", default_value_t = 4)]
    pub parallel: usize,
    /// Require `Authorization: Bearer KEY` on the API (prefer
    /// --api-key-file: argv is visible to other users).
    #[arg(long, conflicts_with = "api_key_file")]
    pub api_key: Option<String>,
    /// File holding the API key.
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// Model name in the API (default: the model's general.name).
    #[arg(long)]
    pub alias: Option<String>,
    /// Tokens per micro-batch (decode tokens + prompt chunks).
    #[arg(long, short = 'b', default_value_t = 512)]
    pub batch_size: usize,
    /// Micro-batches in flight; the running sequences are split among them
    /// (default: one per stage, so every stage has work).
    #[arg(long)]
    pub micro_batches: Option<usize>,
    /// How hidden states travel between workers: f32 (lossless: the pool
    /// gives one process's exact tokens) or f16 (half the bytes, but the
    /// rounding at each hop changes results).
    #[arg(long, default_value = "f32")]
    pub act_dtype: String,
    /// What carries hidden states and replies between the coordinator and
    /// the workers: tcp (a TLS connection per hop and reply line that the
    /// workers' compute threads read and write themselves), grpc (the
    /// control connection's HTTP/2) or quic (a QUIC connection per hop).
    /// All use the same TLS identities; tcp and quic need TLS workers
    /// (plaintext ones stay on gRPC). docs/data-plane.md compares them.
    #[arg(long, default_value = "tcp")]
    pub transport: strata_proto::transport::TransportKind,
    #[command(flatten)]
    pub kv: super::kv_flags::KvCacheArgs,
    /// Embedded worker: sessions on disk.
    #[command(flatten)]
    pub kv_disk: super::kv_disk_flags::KvDiskArgs,
    /// Seconds a batch may go without a reply before its pipeline counts as
    /// hung and is rebuilt over the workers that answer.
    #[arg(long, default_value_t = 120)]
    pub stage_timeout: u64,
    /// Compute every prompt from scratch. By default finished sequences'
    /// full KV blocks stay cached (until their memory is needed) and a
    /// prompt that starts with the same tokens reuses them.
    #[arg(long)]
    pub no_prefix_cache: bool,
    /// Seconds an HTTP client has to send a request body (headers: at most
    /// 10 s); a client trickling or stalling is cut off. Responses, such
    /// as a long stream, are not limited.
    #[arg(long, default_value_t = 30.0)]
    pub request_timeout: f64,
    /// Embedded worker: CPU threads (default: all cores; with --devices,
    /// split evenly between the CPU stages).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Embedded worker: cap on the memory it loads into, e.g. 12GiB (with
    /// --devices, split evenly between the CPU stages; without it they
    /// split the host's available memory).
    #[arg(long, value_parser = super::parse_size)]
    pub mem_budget: Option<u64>,
    /// Embedded worker: which device.
    #[command(flatten)]
    pub device: super::DeviceArgs,
    /// Several stages in this process, one per entry (`cpu` or `cuda:N`),
    /// e.g. `cpu,cpu,cpu` or `cuda:0,cuda:1,cpu`, planned like separate
    /// workers; hidden states pass between them in memory. CPU stages
    /// split --threads and --mem-budget (or the host's memory) evenly.
    /// Default: one stage on --gpu/--cpu's device.
    #[arg(long, value_parser = super::devices::parse_devices, conflicts_with_all = ["gpu", "cpu", "config"])]
    pub devices: Option<super::devices::DeviceList>,
    /// Embedded stages on this machine's GPUs (and CPU).
    #[command(flatten)]
    pub local: super::local_devices::LocalDeviceArgs,
}

/// Plan table and a bar for slices being sent, on stderr.
struct Progress {
    bar: Option<ProgressBar>,
}

impl LoadReporter for Progress {
    fn plan(&mut self, table: &str) {
        eprintln!("{table}");
    }
    fn event(&mut self, e: &LoadEvent) {
        match e {
            LoadEvent::Pushing {
                stage,
                addr,
                sent_bytes,
                total_bytes,
            } => {
                let bar = self.bar.get_or_insert_with(|| {
                    let b = ProgressBar::new(*total_bytes);
                    b.set_style(
                        ProgressStyle::with_template(
                            "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    b.set_message(format!("stage {stage}: sending the slice to {addr}"));
                    b
                });
                bar.set_position(*sent_bytes);
                if sent_bytes >= total_bytes {
                    bar.finish();
                    self.bar = None;
                }
            }
            LoadEvent::Progress {
                stage,
                addr,
                progress,
            } => {
                tracing::info!("stage {stage} ({addr}): {}", progress.message);
            }
        }
    }
    fn ready(&mut self, addr: std::net::SocketAddr) {
        eprintln!("serving on http://{addr}/v1");
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let act_dtype = match args.act_dtype.to_ascii_lowercase().as_str() {
        "f16" => v1::ActDtype::F16,
        "f32" => v1::ActDtype::F32,
        other => anyhow::bail!("unknown --act-dtype {other:?} (f16 or f32)"),
    };
    let kv_type = args.kv.kv_type(None)?;
    anyhow::ensure!(
        args.parallel >= 1 && args.ctx_size >= 2 && args.batch_size >= 1,
        "--parallel, --ctx-size and --batch-size must be positive"
    );
    let token = super::read_token(args.token.as_deref(), args.token_file.as_deref())?;
    let api_key = super::read_secret(
        "API key",
        args.api_key.as_deref(),
        args.api_key_file.as_deref(),
    )?;
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
            .context("setting up the thread pool")?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("strata-serve")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let mut config = ServeConfig {
            model_path: args.model.clone().unwrap_or_default(),
            workers: Vec::new(),
            token: String::new(),
            trust: strata_proto::Trust::Insecure,
            local_workers: Vec::new(),
            listen: args.listen,
            ctx_size: args.ctx_size,
            parallel: args.parallel,
            api_key,
            alias: args.alias.clone(),
            act_dtype,
            kv_type,
            transport: args.transport,
            box_mates: true,
            batch_tokens: args.batch_size,
            micro_batches: args.micro_batches,
            batch_timeout: std::time::Duration::from_secs(args.stage_timeout.max(1)),
            prefix_cache: !args.no_prefix_cache,
            http_limits: strata_coordinator::api::HttpLimits::within(
                std::time::Duration::from_secs_f64(if args.request_timeout.is_finite() {
                    args.request_timeout.clamp(0.1, 86_400.0)
                } else {
                    86_400.0
                }),
            ),
        };
        if let Some(file) = &args.config {
            anyhow::ensure!(
                args.local.gpus.is_none() && !args.local.cpu_stage,
                "--gpus and --cpu-stage choose the stages of one model; with --config each loaded model gets one embedded stage"
            );
            return serve_config(file, config, &args, token).await;
        }
        let model = args.model.clone().context("-m MODEL or --config FILE")?;
        // Keeps the embedded workers serving until we return.
        let mut _embedded = Vec::new();
        if args.links.workers.is_empty() {
            let stages = embedded_stages(&args)?;
            let n_stages = stages.len();
            let token = one_off_token();
            let mut pins = std::collections::HashMap::new();
            for (device, share) in stages {
                let w = start_embedded_worker(
                    share,
                    device,
                    token.clone(),
                    model.clone(),
                    args.kv_disk.stage_config(n_stages),
                )
                .await?;
                config.workers.push(w.addr.clone());
                pins.insert(w.addr.clone(), w.pin);
                _embedded.push(w);
            }
            config.local_workers = config.workers.clone();
            config.trust = strata_proto::Trust::Pinned(pins);
            config.token = token;
        } else {
            anyhow::ensure!(
                args.devices.is_none() && args.local.gpus.is_none() && !args.local.cpu_stage,
                "--devices, --gpus and --cpu-stage choose the stages of this process; give devices to each `strata worker`"
            );
            (config.workers, config.trust) = args.links.resolve()?;
            config.token = token
                .context("--worker needs the cluster token: --token-file FILE (or --token)")?;
            anyhow::ensure!(
                args.mem_budget.is_none(),
                "--mem-budget is for the embedded worker; give it to `strata worker`"
            );
            anyhow::ensure!(
                args.kv_disk.kv_cache_dir.is_none(),
                "--kv-cache-dir is for the embedded worker; give it to each `strata worker`"
            );
        }
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutting down");
        };
        serve(config, Progress { bar: None }, shutdown).await?;
        Ok(())
    })
}

/// `--config`: the models of the file on the embedded workers (one per
/// loaded model) or on `--worker`s.
async fn serve_config(
    file: &std::path::Path,
    base: ServeConfig,
    args: &Args,
    token: Option<String>,
) -> anyhow::Result<()> {
    let defaults = Defaults {
        ctx_size: args.ctx_size,
        parallel: args.parallel,
        batch_tokens: args.batch_size,
        kv_type: base.kv_type,
    };
    let models = SwapConfig::load(file, defaults)?;
    let workers = if args.links.workers.is_empty() {
        Workers::Embedded(Arc::new(EmbeddedLauncher {
            mem_budget: args.mem_budget,
            device: args.device.clone(),
            kv_disk: args.kv_disk.config(),
        }))
    } else {
        anyhow::ensure!(
            args.mem_budget.is_none(),
            "--mem-budget is for the embedded worker; give it to `strata worker`"
        );
        let (addrs, trust) = args.links.resolve()?;
        let token =
            token.context("--worker needs the cluster token: --token-file FILE (or --token)")?;
        Workers::Remote {
            addrs,
            token,
            trust,
        }
    };
    let swap = ModelSwap::new(models, base, workers);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    };
    serve_models(swap, Progress { bar: None }, shutdown).await?;
    Ok(())
}

/// Starts an embedded worker for each model loaded from a models file.
struct EmbeddedLauncher {
    mem_budget: Option<u64>,
    device: super::DeviceArgs,
    kv_disk: Option<strata_worker::service::kv_sessions::KvDiskConfig>,
}

impl WorkerLauncher for EmbeddedLauncher {
    fn launch(&self, model: PathBuf) -> LaunchFuture {
        let share = StageShare {
            mem_budget_bytes: self.mem_budget,
            threads: rayon::current_num_threads(),
            // The models a models file keeps loaded share the host's
            // threads, rather than each take all of them.
            own_thread_pool: Some(false),
        };
        let (device, kv_disk) = (self.device.clone(), self.kv_disk.clone());
        Box::pin(async move {
            let token = one_off_token();
            let w = start_embedded_worker(share, device, token.clone(), model, kv_disk)
                .await
                .map_err(|e| format!("starting an embedded worker: {e:#}"))?;
            Ok(LaunchedWorker {
                addr: w.addr,
                pin: w.pin,
                token,
                stop: w.stop,
            })
        })
    }
}

/// The embedded stages: one per `--devices` entry with its share of the
/// host; or one per GPU `--gpus` chooses (every GPU when the driver shows
/// several and no device is named), with the CPU after them for
/// `--cpu-stage`; or one on `--gpu`/`--cpu`'s device with all of it.
fn embedded_stages(args: &Args) -> anyhow::Result<Vec<(super::DeviceArgs, StageShare)>> {
    use super::local_devices::{choose_devices, gpu_count};
    let threads = rayon::current_num_threads();
    let local = args.local.gpus.is_some() || args.local.cpu_stage;
    anyhow::ensure!(
        !local || (args.devices.is_none() && args.device.gpu.is_none() && !args.device.cpu),
        "--gpus and --cpu-stage choose this machine's devices; --devices, --gpu and --cpu name them"
    );
    let named = args.devices.is_some() || args.device.gpu.is_some() || args.device.cpu;
    let gpus = if named {
        0
    } else if local {
        gpu_count()?
    } else {
        // Only to see whether there are several: a driver that cannot say
        // leaves the one stage `--gpu`/`--cpu`'s rules pick.
        gpu_count().unwrap_or_else(|e| {
            tracing::warn!("{e:#}: one embedded stage");
            0
        })
    };
    let devices = match &args.devices {
        Some(super::devices::DeviceList(devices)) => devices.clone(),
        None if local || gpus > 1 => choose_devices(&args.local, gpus)?,
        None => Vec::new(),
    };
    if devices.is_empty() {
        let share = StageShare {
            mem_budget_bytes: args.mem_budget,
            threads,
            own_thread_pool: None,
        };
        return Ok(vec![(args.device.clone(), share)]);
    }
    super::devices::host_shares(&devices, args.mem_budget, threads)
}

/// A cluster token that lives as long as this process.
fn one_off_token() -> String {
    (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// A worker serving in this process; stops when dropped.
struct EmbeddedWorker {
    addr: String,
    pin: strata_proto::Fingerprint,
    stop: tokio::sync::oneshot::Sender<()>,
    /// Lets the other stages of this process hand it frames in memory.
    _local: LocalStage,
}

/// A worker in this process on a loopback port with a one-off certificate.
async fn start_embedded_worker(
    share: StageShare,
    device: super::DeviceArgs,
    token: String,
    model: PathBuf,
    kv_disk: Option<strata_worker::service::kv_sessions::KvDiskConfig>,
) -> anyhow::Result<EmbeddedWorker> {
    let identity = std::sync::Arc::new(strata_proto::NodeIdentity::generate()?);
    let pin = identity.fingerprint();
    let cache_dir = PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| ".".into()))
        .join(".cache/strata/slices");
    let config = WorkerConfig {
        token,
        mem_budget_bytes: share.mem_budget_bytes,
        model_dir: None,
        // The one file it may read itself.
        model_files: vec![model],
        cache_dir,
        // It reads its one model in place and is never pushed to.
        cache_max_bytes: 0,
        threads: share.threads,
        own_thread_pool: share.own_thread_pool,
        identity: Some(identity),
        kv_disk,
    };
    let service =
        tokio::task::spawn_blocking(move || super::start_worker_service(config, &device)).await??;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the embedded worker")?;
    let addr = listener.local_addr()?.to_string();
    let local = service.register_local(&addr);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        if let Err(e) = service
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await
        {
            tracing::error!("embedded worker: {e}");
        }
    });
    tracing::info!("embedded worker on {addr}");
    Ok(EmbeddedWorker {
        addr,
        pin,
        stop,
        _local: local,
    })
}
