//! `strata worker`: serve a layer range of a model to a coordinator.

use std::path::PathBuf;

use anyhow::Context;
use strata_worker::service::WorkerConfig;

use super::devices::LocalDevice;

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on; loopback unless told otherwise.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: std::net::SocketAddr,
    /// File holding the cluster token (surrounding whitespace ignored).
    #[arg(long, conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// The cluster token itself (prefer --token-file: argv is visible to other users).
    #[arg(long)]
    pub token: Option<String>,
    /// Caps the memory this worker offers and loads into, e.g. 12GiB.
    #[arg(long, value_parser = super::parse_size)]
    pub mem_budget: Option<u64>,
    /// Directory of GGUF models this worker can read itself (matched by digest).
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// Where slices pushed by the coordinator are kept (default: ~/.cache/strata/slices).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Most bytes of pushed slices kept; the least recently used go first.
    #[arg(long, value_parser = super::parse_size, default_value = "64GiB")]
    pub cache_max: u64,
    /// Where the worker keeps its TLS key and certificate (default:
    /// $XDG_STATE_HOME/strata or ~/.local/state/strata).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Print this worker's certificate fingerprint (made on first use) and exit.
    #[arg(long)]
    pub print_fingerprint: bool,
    /// Serve plaintext instead of TLS: anyone who can see the network gets
    /// the cluster token and every prompt. Only on a network you trust.
    #[arg(long, conflicts_with = "print_fingerprint")]
    pub insecure: bool,
    /// CPU threads (default: all cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub device: super::DeviceArgs,
    /// Every GPU of the box (or those named) as a stage of its own, on
    /// --listen's port and the ones after it.
    #[command(flatten)]
    pub local: super::local_devices::LocalDeviceArgs,
    #[command(flatten)]
    pub kv_disk: super::kv_disk_flags::KvDiskArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let state_dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
    let identity = if args.insecure {
        None
    } else {
        let id = strata_proto::NodeIdentity::load_or_create(&state_dir)
            .context("the worker's TLS identity")?;
        if args.print_fingerprint {
            println!("{}", id.fingerprint());
            return Ok(());
        }
        tracing::info!(
            "identity {} ({})",
            id.fingerprint(),
            state_dir.join(strata_proto::tls::IDENTITY_FILE).display()
        );
        Some(std::sync::Arc::new(id))
    };
    let token = super::read_token(args.token.as_deref(), args.token_file.as_deref())?
        .context("a worker needs the cluster token: --token-file FILE (or --token)")?;
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
            .context("setting up the thread pool")?;
    }
    let cache_dir = args.cache_dir.clone().unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| ".".into()))
            .join(".cache/strata/slices")
    });
    let config = WorkerConfig {
        token,
        mem_budget_bytes: args.mem_budget,
        model_dir: args.model_dir.clone(),
        model_files: Vec::new(),
        cache_dir,
        cache_max_bytes: args.cache_max,
        threads: rayon::current_num_threads(),
        own_thread_pool: None,
        identity,
        kv_disk: args.kv_disk.config(),
    };
    let Some(devices) = box_devices(&args)? else {
        let service = super::start_worker_service(config, &args.device)?;
        service.serve_blocking(args.listen)?;
        return Ok(());
    };
    let stages = box_stages(&args, config, &devices)?;
    strata_worker::service::serve_blocking(stages)?;
    Ok(())
}

/// The devices of a box worker, one stage each: those `--gpus` and
/// `--cpu-stage` choose (one, too), or every GPU when the driver shows
/// several and `--gpu`/`--cpu` name none. `None`: one stage, as
/// `--gpu`/`--cpu` pick.
fn box_devices(args: &Args) -> anyhow::Result<Option<Vec<LocalDevice>>> {
    use super::local_devices::{choose_devices, gpu_count};
    let asked = args.local.gpus.is_some() || args.local.cpu_stage;
    let named = args.device.gpu.is_some() || args.device.cpu;
    anyhow::ensure!(
        !(asked && named),
        "--gpus and --cpu-stage choose this machine's devices; --gpu and --cpu name one"
    );
    if named {
        return Ok(None);
    }
    let gpus = if asked {
        gpu_count()?
    } else {
        gpu_count().unwrap_or_else(|e| {
            tracing::warn!("{e:#}: one stage");
            0
        })
    };
    if !asked && gpus < 2 {
        return Ok(None);
    }
    Ok(Some(choose_devices(&args.local, gpus)?))
}

/// One service per device, on --listen's port and the next ones (any free
/// port each with port 0), sharing the identity, the token and the model
/// directory. A CPU stage gets --mem-budget (else the host's available
/// memory) and the cores; each stage keeps its pushed slices and KV files
/// in a folder of its own.
fn box_stages(
    args: &Args,
    config: WorkerConfig,
    devices: &[LocalDevice],
) -> anyhow::Result<Vec<(strata_worker::service::WorkerService, std::net::SocketAddr)>> {
    let shares = super::devices::host_shares(devices, args.mem_budget, config.threads)?;
    let n = devices.len();
    let mut stages = Vec::with_capacity(n);
    for (i, (device, share)) in shares.into_iter().enumerate() {
        let mut listen = args.listen;
        if listen.port() != 0 {
            let port = listen.port().checked_add(i as u16).with_context(|| {
                format!(
                    "--listen {}: no port {i} after it for stage {i}",
                    args.listen
                )
            })?;
            listen.set_port(port);
        }
        let config = WorkerConfig {
            mem_budget_bytes: share.mem_budget_bytes,
            threads: share.threads,
            own_thread_pool: share.own_thread_pool,
            cache_dir: if n > 1 {
                config.cache_dir.join(format!("stage-{i}"))
            } else {
                config.cache_dir.clone()
            },
            cache_max_bytes: config.cache_max_bytes / n as u64,
            kv_disk: args.kv_disk.stage_config(n),
            ..config.clone()
        };
        let service = super::start_worker_service(config, &device)
            .with_context(|| format!("stage {i} ({:?})", devices[i]))?;
        stages.push((service, listen));
    }
    Ok(stages)
}

fn default_state_dir() -> PathBuf {
    match std::env::var_os("XDG_STATE_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("strata"),
        _ => PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| ".".into()))
            .join(".local/state/strata"),
    }
}
