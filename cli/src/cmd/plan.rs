//! `strata plan`: where each layer would go, without loading tensor data.

use anyhow::Context;
use strata_coordinator::cluster::{connect_workers, worker_specs};
use strata_coordinator::planner::synth_profile::synth_profile;
use strata_coordinator::planner::units::{format_bytes, parse_bytes, parse_devices};
use strata_coordinator::planner::{legend, plan, table, PlanRequest};
use strata_model::arch::{Architecture, ModelSpec};
use strata_model::profile::MemoryProfile;
use strata_model::synth::{QuantScheme, SynthSpec};

#[derive(clap::Args)]
pub struct Args {
    /// GGUF model file (only its header is read).
    #[arg(
        long,
        short = 'm',
        required_unless_present = "synth",
        conflicts_with = "synth"
    )]
    pub model: Option<std::path::PathBuf>,
    /// Plan for a synthetic shape without writing it: ARCH:PRESET[:QUANT],
    /// e.g. llama:70b:Q4_K_M.
    #[arg(long)]
    pub synth: Option<String>,
    /// Devices to plan over: comma-separated [cpu:|cuda:]SIZE[@HOST], e.g.
    /// 16GiB,16GiB,12GiB (each its own host unless @HOST says otherwise).
    /// Without it (and without --worker): this machine's devices, as
    /// `strata serve` would use them.
    #[arg(long, conflicts_with = "workers")]
    pub devices: Option<String>,
    /// This machine's devices (without --devices or --worker).
    #[command(flatten)]
    pub local: super::local_devices::LocalDeviceArgs,
    /// Matvec bandwidth of each device in bytes per second, same order and
    /// units as --devices (e.g. 900G,900G,300G); unknown = equal speeds.
    #[arg(long)]
    pub bandwidths: Option<String>,
    /// Plan over running workers instead (asks each what it offers).
    #[command(flatten)]
    pub links: super::links::LinkArgs,
    /// The cluster token file, with --worker.
    #[arg(long, conflicts_with = "token")]
    pub token_file: Option<std::path::PathBuf>,
    /// The cluster token, with --worker.
    #[arg(long)]
    pub token: Option<String>,
    /// Context per sequence, in tokens.
    #[arg(long, short = 'c', default_value_t = 4096)]
    pub ctx_size: usize,
    /// Sequences held at once.
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
    /// KV cache type of K and V at once (f16, q8_0 or q4_0): the
    /// --cache-type-k/-v pair in one flag.
    #[arg(long, value_name = "TYPE")]
    pub kv_type: Option<String>,
    #[command(flatten)]
    pub kv: super::kv_flags::KvCacheArgs,
    /// Largest batch in tokens (sizes activation scratch).
    #[arg(long, default_value_t = strata_coordinator::planner::DEFAULT_MAX_BATCH_TOKENS)]
    pub batch_tokens: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let local = args.local.gpus.is_some() || args.local.cpu_stage;
    anyhow::ensure!(
        !local || (args.devices.is_none() && args.links.workers.is_empty()),
        "--gpus and --cpu-stage choose this machine's devices; --devices and --worker list others"
    );
    let mut workers = if let Some(devices) = &args.devices {
        parse_devices(devices)
            .map_err(anyhow::Error::msg)
            .context("parsing --devices")?
    } else if args.links.workers.is_empty() {
        this_machine(&args.local)?
    } else {
        let token = super::read_token(args.token.as_deref(), args.token_file.as_deref())?
            .context("--worker needs the cluster token: --token-file FILE (or --token)")?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (addrs, trust) = args.links.resolve()?;
        let handles = rt.block_on(connect_workers(&addrs, &token, &trust))?;
        worker_specs(&handles)
    };
    if let Some(list) = &args.bandwidths {
        let bws: Vec<u64> = list
            .split(',')
            .map(parse_bytes)
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)
            .context("parsing --bandwidths")?;
        anyhow::ensure!(
            bws.len() == workers.len() && bws.iter().all(|&b| b > 0),
            "--bandwidths needs one positive value per device ({} devices, {} values)",
            workers.len(),
            bws.len()
        );
        for (w, bw) in workers.iter_mut().zip(bws) {
            w.matvec_bandwidth_bytes_per_s = Some(bw as f64);
        }
    }
    let kv_type = args.kv.kv_type(args.kv_type.as_deref())?;
    let (name, hp, profile) = load_profile(&args)?;
    let req = PlanRequest {
        parallel: args.parallel,
        max_batch_tokens: args.batch_tokens,
        ..PlanRequest::new(profile, hp.d_model, args.ctx_size, kv_type)
    };
    println!(
        "model:   {name} ({}, {} layers, {} of weights)",
        hp.arch,
        hp.n_layers,
        format_bytes(req.profile.total_weight_bytes())
    );
    if req.profile.is_moe() {
        println!(
            "experts: {} of the weights in routed experts, {} per layer, {} used per token: \
             a token reads {} of weights",
            format_bytes(req.profile.total_expert_bytes()),
            req.profile.expert_count,
            req.profile.expert_used_count,
            format_bytes(req.profile.active_bytes_per_token())
        );
    }
    println!(
        "context: {} tokens x {} sequence(s), KV {}, batch {} tokens",
        req.ctx_size,
        req.parallel,
        kv_type.name(),
        req.max_batch_tokens
    );
    println!("margin:  {}", req.margin);
    let p = plan(&req, &workers)?;
    println!();
    print!("{}", table(&p, &workers));
    println!();
    println!("{}", legend(&req));
    Ok(())
}

/// This machine's devices, named `<host>:gpuN` and `<host>:cpu`, with the
/// memory each has free now.
fn this_machine(
    args: &super::local_devices::LocalDeviceArgs,
) -> anyhow::Result<Vec<strata_coordinator::planner::WorkerSpec>> {
    use super::local_devices::{choose, gpu_memory, host_memory};
    use strata_coordinator::planner::Backend;
    let host = strata_worker::service::system::host_name();
    let stages = choose(args, &gpu_memory()?, host_memory()?)?;
    Ok(stages
        .iter()
        .map(|s| {
            let backend = match s.device {
                super::devices::LocalDevice::Cpu => Backend::Cpu,
                super::devices::LocalDevice::Cuda(_) => Backend::Cuda,
            };
            strata_coordinator::planner::WorkerSpec::new(
                s.name(&host),
                backend,
                &host,
                s.free_bytes,
            )
        })
        .collect())
}

fn load_profile(args: &Args) -> anyhow::Result<(String, ModelSpec, MemoryProfile)> {
    if let Some(s) = &args.synth {
        let mut parts = s.split(':');
        let (arch, preset, quant) = (
            parts.next().unwrap_or(""),
            parts.next(),
            parts.next().unwrap_or("Q4_K_M"),
        );
        let arch = Architecture::from_name(arch).with_context(|| {
            format!("--synth {s:?}: unknown architecture {arch:?} (llama, qwen2, qwen3, gemma3, qwen3moe, gpt-oss, mistral3, qwen35, qwen35moe, gemma4)")
        })?;
        let preset =
            preset.with_context(|| format!("--synth {s:?}: expected ARCH:PRESET[:QUANT]"))?;
        let q = QuantScheme::parse(quant)
            .with_context(|| format!("--synth {s:?}: unknown quant type {quant:?}"))?;
        let spec = SynthSpec::from_preset(arch, preset, q)?;
        let (hp, profile) = synth_profile(&spec)?;
        return Ok((
            format!("synthetic {arch} {preset} {}", quant.to_ascii_uppercase()),
            hp,
            profile,
        ));
    }
    let path = args
        .model
        .as_ref()
        .context("--model or --synth is required")?;
    let f = super::open(path)?;
    let hp = ModelSpec::from_gguf(&f)?;
    let profile = MemoryProfile::from_gguf(&f, &hp);
    let name = f
        .get_str("general.name")
        .map_or_else(|| path.display().to_string(), str::to_string);
    Ok((name, hp, profile))
}
