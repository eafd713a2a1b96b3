use std::time::Instant;

use rand::{Rng, SeedableRng};
use strata_worker::generate::{one_batch_tiled_rows, prefill, prefill_rows};
use strata_worker::{BatchSeq, LogitRows, StageInput};

use strata_kernels::Backend;
use strata_model::profile::MemoryProfile;
use strata_model::GgufFile;
use strata_worker::Stage;

use super::{RunArgs, StageJob};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub run: RunArgs,
    /// Prompt tokens processed in one go (llama-bench's pp).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    pub n_prompt: usize,
    /// Tokens generated one at a time (llama-bench's tg).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub n_gen: usize,
    /// Repetitions of each test.
    #[arg(short = 'r', long, default_value_t = 3)]
    pub repetitions: usize,
}

pub fn run(mut args: Args) -> anyhow::Result<()> {
    args.run.ctx_size = args.run.ctx_size.max(args.n_prompt + args.n_gen + 1);
    let run = args.run.clone();
    run.run(args)
}

impl StageJob for Args {
    fn run<B: Backend>(self, file: GgufFile, stage: Stage<B>) -> anyhow::Result<()> {
        let total_bytes: u64 = file.tensors.iter().map(|t| t.size_bytes).sum();
        let profile = MemoryProfile::from_gguf(&file, stage.spec());
        bench(self, stage, total_bytes, &profile)
    }
}

fn bench<B: Backend>(
    args: Args,
    mut stage: Stage<B>,
    total_bytes: u64,
    profile: &MemoryProfile,
) -> anyhow::Result<()> {
    // What a decoded token reads: of a MoE layer's experts, only those used.
    let weight_bytes = profile.active_bytes_per_token();
    let vocab = stage.spec().vocab_size as u32;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut random_tokens = |n: usize| {
        (0..n)
            .map(|_| rng.random_range(0..vocab))
            .collect::<Vec<u32>>()
    };

    // One warm-up pass, as llama-bench does.
    prefill(
        &mut stage,
        0,
        0,
        &random_tokens(16.min(args.n_prompt.max(1))),
        None,
    )?;
    stage.release(0);

    let mut results = Vec::new();
    if args.n_prompt > 0 {
        let mut rates = Vec::new();
        // llama-bench decodes the prompt as one batch.
        let tiled = one_batch_tiled_rows(&stage, args.n_prompt);
        for _ in 0..args.repetitions {
            let tokens = random_tokens(args.n_prompt);
            let t = Instant::now();
            prefill_rows(&mut stage, 0, 0, &tokens, None, &tiled)?;
            rates.push(args.n_prompt as f64 / t.elapsed().as_secs_f64());
            stage.release(0);
        }
        results.push((format!("pp{}", args.n_prompt), rates));
    }
    let mut decode_profile = None;
    if args.n_gen > 0 {
        let _ = stage.backend().profile_report(); // decode's own, below
        let mut rates = Vec::new();
        for _ in 0..args.repetitions {
            let tokens = random_tokens(args.n_gen);
            let t = Instant::now();
            for (pos, &tok) in tokens.iter().enumerate() {
                let batch = [BatchSeq {
                    seq: 0,
                    start_pos: pos,
                    n_tokens: 1,
                    logits: LogitRows::Last,
                    decode: true,
                    tiled: Vec::new(),
                }];
                stage.forward(&batch, StageInput::Tokens(vec![tok]))?;
            }
            rates.push(args.n_gen as f64 / t.elapsed().as_secs_f64());
            stage.release(0);
        }
        results.push((format!("tg{}", args.n_gen), rates));
        decode_profile = stage.backend().profile_report();
    }

    if profile.is_moe() {
        println!(
            "weights read per decoded token: {:.1} MiB of {:.1} MiB (experts: only the {} used of each layer's {})\n",
            weight_bytes as f64 / (1u64 << 20) as f64,
            total_bytes as f64 / (1u64 << 20) as f64,
            profile.expert_used_count,
            profile.expert_count,
        );
    }
    let threads = rayon::current_num_threads();
    let backend = Backend::name(stage.backend());
    let backend = backend.split_whitespace().next().unwrap_or("cpu");
    println!("| model | backend | threads | test | t/s |");
    println!("| --- | --- | ---: | ---: | ---: |");
    let name = args
        .run
        .model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tg_mean = None;
    for (test, rates) in results {
        let mean = rates.iter().sum::<f64>() / rates.len() as f64;
        let sd = (rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>()
            / rates.len().max(2).saturating_sub(1) as f64)
            .sqrt();
        println!("| {name} | {backend} | {threads} | {test} | {mean:.2} ± {sd:.2} |");
        if test.starts_with("tg") {
            tg_mean = Some(mean);
        }
    }
    // Decode reads every weight a token uses once per token: the device's
    // copy rate over those bytes bounds it.
    if let (Some(tg), Some(bw)) = (tg_mean, stage.backend().device_bandwidth()) {
        let limit = bw / weight_bytes as f64;
        println!();
        println!(
            "memory-bound limit: {limit:.1} tok/s ({:.2} GiB read per token at {:.0} GB/s device copy); tg is {:.0}% of it",
            weight_bytes as f64 / (1u64 << 30) as f64,
            bw / 1e9,
            100.0 * tg / limit
        );
    }
    if let Some(report) = decode_profile {
        println!();
        println!(
            "decode, device time per kernel ({} x tg{}, STRATA_CUDA_PROFILE=1):",
            args.repetitions, args.n_gen
        );
        print!("{report}");
    }
    Ok(())
}
