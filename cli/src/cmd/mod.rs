pub mod bench;
pub mod generate;
pub mod inspect;
pub mod perplexity;
pub mod plan;
pub mod serve;
pub mod synth;
pub mod worker;

use std::path::Path;

use anyhow::Context;
use strata_kernels::CpuBackend;
use strata_model::GgufFile;
use strata_worker::{LayerRange, Stage};

/// Flags shared by the commands that run a model.
#[derive(clap::Args, Clone)]
pub struct RunArgs {
    /// GGUF model file (first shard of a split model).
    #[arg(long, short = 'm')]
    pub model: std::path::PathBuf,
    /// CPU threads (default: all cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Context size in tokens.
    #[arg(long, short = 'c', default_value_t = 4096)]
    pub ctx_size: usize,
}

impl RunArgs {
    pub fn init_threads(&self) -> anyhow::Result<()> {
        if let Some(n) = self.threads {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n.max(1))
                .build_global()
                .context("setting up the thread pool")?;
        }
        Ok(())
    }

    /// Opens the model and loads all of its layers on the CPU backend.
    pub fn load(&self) -> anyhow::Result<(GgufFile, Stage<CpuBackend>)> {
        self.init_threads()?;
        let file = open(&self.model)?;
        let hp = strata_model::arch::HyperParams::from_gguf(&file)?;
        let started = std::time::Instant::now();
        let stage = Stage::load(
            CpuBackend::new(),
            &file,
            LayerRange {
                first: 0,
                end: hp.n_layers,
            },
            self.ctx_size,
        )
        .with_context(|| format!("loading {}", self.model.display()))?;
        tracing::info!(
            "loaded {} ({} layers, {}) on {} in {:.2}s",
            self.model.display(),
            hp.n_layers,
            hp.arch,
            strata_kernels::Backend::name(stage.backend()),
            started.elapsed().as_secs_f64()
        );
        Ok((file, stage))
    }
}

pub fn open(path: &Path) -> anyhow::Result<GgufFile> {
    Ok(GgufFile::open(path)?)
}

/// Bytes as GiB/MiB for tables.
pub fn human_bytes(b: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if b as f64 >= 1024.0 * MIB {
        format!("{:.2} GiB", b as f64 / (1024.0 * MIB))
    } else {
        format!("{:.1} MiB", b as f64 / MIB)
    }
}

/// The cluster token from `--token` or `--token-file` (whitespace around it
/// ignored); `None` when neither was given.
pub fn read_token(token: Option<&str>, file: Option<&Path>) -> anyhow::Result<Option<String>> {
    let t = match (token, file) {
        (Some(t), _) => t.trim().to_string(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("reading the token file {}", f.display()))?
            .trim()
            .to_string(),
        (None, None) => return Ok(None),
    };
    anyhow::ensure!(!t.is_empty(), "the cluster token is empty");
    Ok(Some(t))
}

/// `--mem-budget` style sizes: 12GiB, 512MiB, 16G.
pub fn parse_size(s: &str) -> Result<u64, String> {
    strata_worker::service::system::parse_bytes(s)
}
