//! This machine's devices as stages, for one command per box: every GPU
//! the driver shows (or those `--gpus` names), then the host's CPU with
//! `--cpu-stage` (or when there is no GPU). `strata plan` names them
//! `<host>:gpu0`, `<host>:gpu1`, ..., `<host>:cpu`.

use anyhow::Context;

use super::devices::LocalDevice;

/// `--gpus` and `--cpu-stage`, on `serve` and `plan`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct LocalDeviceArgs {
    /// The local GPUs to use, each as its own stage: `all` or a list of
    /// ordinals, e.g. `0,2`. Default: every GPU the driver shows (`serve`
    /// without --gpu/--cpu/--devices uses them all when there are several).
    #[arg(long, value_name = "all|N,N,...", value_parser = parse_gpus)]
    pub gpus: Option<GpuChoice>,
    /// Add the host's RAM and cores as one more stage, after the GPUs, for
    /// layers they cannot hold. A CPU stage runs at the host's memory
    /// bandwidth, several times slower than a GPU's.
    #[arg(long)]
    pub cpu_stage: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpuChoice {
    All,
    These(Vec<usize>),
}

/// `all`, or comma-separated GPU ordinals (each once).
pub fn parse_gpus(s: &str) -> Result<GpuChoice, String> {
    if s.trim() == "all" {
        return Ok(GpuChoice::All);
    }
    let mut out: Vec<usize> = Vec::new();
    for item in s.split(',') {
        let n = item
            .trim()
            .parse()
            .map_err(|_| format!("{item:?} is not a GPU ordinal (give `all` or e.g. `0,2`)"))?;
        if out.contains(&n) {
            return Err(format!("GPU {n} is listed twice"));
        }
        out.push(n);
    }
    Ok(GpuChoice::These(out))
}

/// One local device and the memory it offers (free now).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalStage {
    pub device: LocalDevice,
    pub free_bytes: u64,
}

impl LocalStage {
    /// Its name in a plan: `<host>:gpuN` or `<host>:cpu`.
    pub fn name(&self, host: &str) -> String {
        match self.device {
            LocalDevice::Cuda(n) => format!("{host}:gpu{n}"),
            LocalDevice::Cpu => format!("{host}:cpu"),
        }
    }
}

/// The stages `args` chooses from `gpus` (each GPU's free memory, by
/// ordinal) and the host's `cpu_free` bytes.
pub fn choose(
    args: &LocalDeviceArgs,
    gpus: &[u64],
    cpu_free: u64,
) -> anyhow::Result<Vec<LocalStage>> {
    let ordinals: Vec<usize> = match &args.gpus {
        None | Some(GpuChoice::All) => (0..gpus.len()).collect(),
        Some(GpuChoice::These(list)) => list.clone(),
    };
    anyhow::ensure!(
        args.gpus.is_none() || !gpus.is_empty(),
        "--gpus: the driver shows no GPU on this machine (use --cpu, or --devices cpu,...)"
    );
    if let Some(&n) = ordinals.iter().find(|&&n| n >= gpus.len()) {
        anyhow::bail!(
            "--gpus: GPU {n} is not here: the driver shows {} GPU(s)",
            gpus.len()
        );
    }
    let mut out: Vec<LocalStage> = ordinals
        .into_iter()
        .map(|n| LocalStage {
            device: LocalDevice::Cuda(n),
            free_bytes: gpus[n],
        })
        .collect();
    if args.cpu_stage || out.is_empty() {
        if args.cpu_stage && !out.is_empty() {
            tracing::warn!(
                "--cpu-stage: the host's RAM is one more stage after the GPUs; its layers run at \
                 the CPU's memory bandwidth, several times slower than a GPU's, so keep it for \
                 what the GPUs cannot hold"
            );
        }
        out.push(LocalStage {
            device: LocalDevice::Cpu,
            free_bytes: cpu_free,
        });
    }
    Ok(out)
}

/// The devices `args` chooses out of `gpus` GPUs, for stages that read
/// their own device's memory (serve's embedded stages, a box worker's).
pub fn choose_devices(args: &LocalDeviceArgs, gpus: usize) -> anyhow::Result<Vec<LocalDevice>> {
    Ok(choose(args, &vec![0; gpus], 0)?
        .into_iter()
        .map(|s| s.device)
        .collect())
}

/// The free memory of each GPU the driver shows (the CUDA emulator's one
/// device with `STRATA_CUDA_EMULATOR=1`), by ordinal.
pub fn gpu_memory() -> anyhow::Result<Vec<u64>> {
    emulator_if_asked()?;
    let devices = strata_kernels::cuda::devices().map_err(anyhow::Error::msg)?;
    Ok(devices.into_iter().map(|(free, _)| free).collect())
}

/// How many GPUs the driver shows (no context is made).
pub fn gpu_count() -> anyhow::Result<usize> {
    emulator_if_asked()?;
    strata_kernels::cuda::device_count().map_err(anyhow::Error::msg)
}

fn emulator_if_asked() -> anyhow::Result<()> {
    if strata_kernels::cuda::emulator::requested() {
        strata_kernels::cuda::emulator::install()
            .context("STRATA_CUDA_EMULATOR=1: starting the CUDA emulator")?;
    }
    Ok(())
}

/// The host's available memory (`/proc/meminfo`).
pub fn host_memory() -> anyhow::Result<u64> {
    strata_worker::service::system::memory_bytes()
        .map(|(_, available)| available)
        .context("reading the host's available memory from /proc/meminfo")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gpu_lists() {
        assert_eq!(parse_gpus("all"), Ok(GpuChoice::All));
        assert_eq!(parse_gpus("0, 2"), Ok(GpuChoice::These(vec![0, 2])));
        assert!(parse_gpus("0,0").unwrap_err().contains("twice"));
        assert!(parse_gpus("gpu1").is_err());
        assert!(parse_gpus("").is_err());
    }

    #[test]
    fn every_gpu_by_default_the_cpu_when_asked_or_alone() {
        let args = |gpus, cpu_stage| LocalDeviceArgs { gpus, cpu_stage };
        let devices = |a: &LocalDeviceArgs, gpus: &[u64]| -> Vec<LocalDevice> {
            choose(a, gpus, 64)
                .unwrap()
                .iter()
                .map(|s| s.device)
                .collect()
        };
        use LocalDevice::*;
        assert_eq!(
            devices(&args(None, false), &[16, 16, 12]),
            [Cuda(0), Cuda(1), Cuda(2)]
        );
        assert_eq!(
            devices(
                &args(Some(GpuChoice::These(vec![2, 0])), true),
                &[16, 16, 12]
            ),
            [Cuda(2), Cuda(0), Cpu]
        );
        assert_eq!(devices(&args(None, false), &[]), [Cpu]);
        assert_eq!(devices(&args(None, true), &[]), [Cpu]);
        let err = choose(&args(Some(GpuChoice::All), true), &[], 64).unwrap_err();
        assert!(err.to_string().contains("no GPU"), "{err}");
        let err = choose(&args(Some(GpuChoice::These(vec![1])), false), &[16], 64).unwrap_err();
        assert!(err.to_string().contains("GPU 1 is not here"), "{err}");
        let s = &choose(&args(None, true), &[16], 64).unwrap();
        assert_eq!((s[0].free_bytes, s[1].free_bytes), (16, 64));
        assert_eq!(
            (s[0].name("box"), s[1].name("box")),
            ("box:gpu0".into(), "box:cpu".into())
        );
    }
}
