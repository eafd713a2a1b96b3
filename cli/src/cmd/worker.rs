//! `strata worker`: serve a layer range of a model to a coordinator.

use std::path::PathBuf;

use anyhow::Context;
use strata_worker::service::WorkerConfig;

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
    let cache_dir = args.cache_dir.unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| ".".into()))
            .join(".cache/strata/slices")
    });
    let config = WorkerConfig {
        token,
        mem_budget_bytes: args.mem_budget,
        model_dir: args.model_dir,
        model_files: Vec::new(),
        cache_dir,
        cache_max_bytes: args.cache_max,
        threads: rayon::current_num_threads(),
        own_thread_pool: false,
        identity,
        kv_disk: args.kv_disk.config(),
    };
    let service = super::start_worker_service(config, &args.device)?;
    service.serve_blocking(args.listen)?;
    Ok(())
}

fn default_state_dir() -> PathBuf {
    match std::env::var_os("XDG_STATE_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("strata"),
        _ => PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| ".".into()))
            .join(".local/state/strata"),
    }
}
