pub mod bench;
pub mod devices;
pub mod generate;
pub mod inspect;
pub mod kv_disk_flags;
pub mod kv_flags;
pub mod links;
pub mod local_devices;
pub mod perplexity;
pub mod plan;
pub mod serve;
pub mod synth;
pub mod worker;

use std::path::Path;

use anyhow::Context;
use strata_kernels::cuda::CudaBackend;
use strata_kernels::{Backend, CpuBackend};
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
    #[command(flatten)]
    pub kv: kv_flags::KvCacheArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Which backend runs the layers.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct DeviceArgs {
    /// CUDA device to use (default 0 when a CUDA driver is present).
    #[arg(long, value_name = "N", conflicts_with = "cpu")]
    pub gpu: Option<usize>,
    /// Use the CPU backend even when a GPU is present.
    #[arg(long)]
    pub cpu: bool,
}

impl DeviceArgs {
    /// The CUDA backend when asked for or available, else `None` (CPU), with
    /// one log line saying why.
    pub fn cuda(&self) -> anyhow::Result<Option<CudaBackend>> {
        if self.cpu {
            return Ok(None);
        }
        // The CUDA emulator (the kernels run on the CPU, for tests) only
        // when asked for: it is never a fallback.
        if strata_kernels::cuda::emulator::requested() {
            strata_kernels::cuda::emulator::install()
                .context("STRATA_CUDA_EMULATOR=1: starting the CUDA emulator")?;
        }
        if !strata_kernels::cuda::driver_present() {
            anyhow::ensure!(
                self.gpu.is_none(),
                "--gpu: no CUDA driver (libcuda.so) on this machine"
            );
            tracing::info!("no CUDA driver on this machine: using the CPU backend");
            return Ok(None);
        }
        let n = self.gpu.unwrap_or(0);
        match CudaBackend::new(n) {
            Ok(b) => {
                tracing::info!("using {}", Backend::name(&b));
                Ok(Some(b))
            }
            // A GPU that is there but fails is an error, not a silent (and
            // far slower) CPU run: the user asks for that with --cpu.
            Err(e) => Err(anyhow::anyhow!(
                "CUDA device {n}: {e} (run with --cpu to use the CPU backend instead)"
            )),
        }
    }
}

/// Work on a loaded stage of any backend.
pub trait StageJob {
    fn run<B: Backend>(self, file: GgufFile, stage: Stage<B>) -> anyhow::Result<()>;
}

impl RunArgs {
    /// The process's pool, `--threads` big (else rayon's default), with
    /// this thread as its first: the job's parallel loops then run here
    /// rather than park this thread once a loop (`stage_thread::spawn` in
    /// the worker crate says what that costs).
    pub fn init_threads(&self) -> anyhow::Result<()> {
        rayon::ThreadPoolBuilder::new()
            .num_threads(self.threads.map_or(0, |n| n.max(1)))
            .use_current_thread()
            .build_global()
            .context("setting up the thread pool")
    }

    /// Loads the whole model on the GPU when there is one (see
    /// [`DeviceArgs`]), else the CPU, and runs `job` on it.
    pub fn run<J: StageJob>(&self, job: J) -> anyhow::Result<()> {
        self.init_threads()?;
        let file = open(&self.model)?;
        match self.device.cuda()? {
            Some(cuda) => {
                let stage = self.load_on(cuda, &file)?;
                job.run(file, stage)
            }
            None => {
                let stage = self.load_on(CpuBackend::new(), &file)?;
                job.run(file, stage)
            }
        }
    }

    fn load_on<B: Backend>(&self, backend: B, file: &GgufFile) -> anyhow::Result<Stage<B>> {
        let hp = strata_model::arch::ModelSpec::from_gguf(file)?;
        let kv_type = self.kv.kv_type(None)?;
        let started = std::time::Instant::now();
        let stage = Stage::load_kv(
            backend,
            file,
            LayerRange {
                first: 0,
                end: hp.n_layers,
            },
            self.ctx_size,
            kv_type,
        )
        .with_context(|| format!("loading {}", self.model.display()))?;
        tracing::info!(
            "loaded {} ({} layers, {}) on {} in {:.2}s, KV cache {}",
            self.model.display(),
            hp.n_layers,
            hp.arch,
            Backend::name(stage.backend()),
            started.elapsed().as_secs_f64(),
            kv_type.name()
        );
        Ok(stage)
    }
}

pub fn open(path: &Path) -> anyhow::Result<GgufFile> {
    Ok(GgufFile::open(path)?)
}

/// The cluster token from `--token` or `--token-file` (whitespace around it
/// ignored); `None` when neither was given.
pub fn read_token(token: Option<&str>, file: Option<&Path>) -> anyhow::Result<Option<String>> {
    read_secret("cluster token", token, file)
}

/// A secret given inline or in a file (trimmed); empty is an error.
pub fn read_secret(
    what: &str,
    value: Option<&str>,
    file: Option<&Path>,
) -> anyhow::Result<Option<String>> {
    let t = match (value, file) {
        (Some(t), _) => t.trim().to_string(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("reading the {what} file {}", f.display()))?
            .trim()
            .to_string(),
        (None, None) => return Ok(None),
    };
    anyhow::ensure!(!t.is_empty(), "the {what} is empty");
    Ok(Some(t))
}

/// `--mem-budget` style sizes: 12GiB, 512MiB, 16G.
pub fn parse_size(s: &str) -> Result<u64, String> {
    strata_model::units::parse_bytes(s)
}

/// A worker service on the GPU when there is one (see [`DeviceArgs`]), else
/// on the CPU.
pub fn start_worker_service(
    config: strata_worker::service::WorkerConfig,
    device: &DeviceArgs,
) -> anyhow::Result<strata_worker::service::WorkerService> {
    use strata_worker::service::WorkerService;
    Ok(match device.cuda()? {
        Some(cuda) => WorkerService::start(config, move || cuda.clone())?,
        None => WorkerService::start(config, CpuBackend::new)?,
    })
}
