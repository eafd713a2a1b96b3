use anyhow::Context;
use strata_model::arch::Architecture;
use strata_model::synth::{QuantScheme, SynthSpec};

#[derive(clap::Args)]
pub struct Args {
    /// llama, qwen2, qwen3, gemma3, qwen3moe, gpt-oss, mistral3, qwen35,
    /// qwen35moe or gemma4.
    #[arg(long)]
    pub arch: String,
    /// A real model's size: tiny, 135m, 1b, 8b, 70b (llama); 0.5b, 7b, 72b (qwen2);
    /// 0.6b, 8b, 32b (qwen3); 270m, 1b, 4b, 12b, 27b (gemma3); 30b-a3b, 235b-a22b
    /// (qwen3moe); 20b, 120b (gpt-oss); 14b (mistral3); 27b (qwen35); 35b-a3b
    /// (qwen35moe); tiny-moe, 26b-a4b, 31b (gemma4).
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K, Q4_K_M, Q5_K_M,
    /// MXFP4 (experts MXFP4, the rest Q8_0, as llama.cpp's MXFP4_MOE).
    #[arg(long, default_value = "Q4_K_M")]
    pub quant: String,
    /// Override the number of layers.
    #[arg(long)]
    pub layers: Option<usize>,
    /// Override the training context the file declares
    /// (`context_length`), e.g. 131072 for a long-context run of a tiny
    /// preset.
    #[arg(long)]
    pub context_length: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output file.
    #[arg(short = 'o', long)]
    pub output: std::path::PathBuf,
    /// A Jinja chat template file to store in place of the built-in ChatML
    /// one (e.g. a family's tool-calling template).
    #[arg(long)]
    pub chat_template: Option<std::path::PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let arch = Architecture::from_name(&args.arch).with_context(|| {
        format!(
            "unknown architecture {:?} (llama, qwen2, qwen3, gemma3, qwen3moe, gpt-oss, mistral3, qwen35, qwen35moe, gemma4)",
            args.arch
        )
    })?;
    let quant = QuantScheme::parse(&args.quant)
        .with_context(|| format!("unknown quant type {:?}", args.quant))?;
    let mut spec = SynthSpec::from_preset(arch, &args.preset, quant)?;
    if let Some(n) = args.layers {
        anyhow::ensure!(n > 0, "--layers must be at least 1");
        spec.shape.n_layers = n;
    }
    if let Some(n) = args.context_length {
        anyhow::ensure!(n > 0, "--context-length must be at least 1");
        spec.shape.context_length = n;
    }
    spec.seed = args.seed;
    if let Some(path) = &args.chat_template {
        spec.chat_template = Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the chat template {}", path.display()))?,
        );
    }
    let total: u64 = spec.writer()?.tensors().iter().map(|t| t.size_bytes).sum();
    let bar = indicatif::ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("writing {}", args.output.display()));
    spec.write(&args.output, |done, _| bar.set_position(done))?;
    bar.finish_and_clear();
    eprintln!(
        "wrote {} ({arch} {} layers, d_model {}, {}, {:.2} GiB of weights)",
        args.output.display(),
        spec.shape.n_layers,
        spec.shape.d_model,
        args.quant.to_ascii_uppercase(),
        total as f64 / (1u64 << 30) as f64
    );
    Ok(())
}
