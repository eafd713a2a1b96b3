use std::io::Write;

use anyhow::Context;
use strata_model::tokenizer::Tokenizer;
use strata_worker::generate::generate;
use strata_worker::{Sampler, SamplingParams};

use strata_kernels::Backend;
use strata_model::GgufFile;
use strata_worker::Stage;

use super::{RunArgs, StageJob};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub run: RunArgs,
    /// The raw prompt (no chat template is applied).
    #[arg(long, short = 'p')]
    pub prompt: String,
    /// Tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    pub n_predict: usize,
    /// Temperature; 0 is greedy.
    #[arg(long = "temp", default_value_t = 0.8)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    #[arg(long = "repeat-penalty", default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Keep going past end-of-generation tokens.
    #[arg(long)]
    pub ignore_eos: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let run = args.run.clone();
    run.run(args)
}

impl StageJob for Args {
    fn run<B: Backend>(self, file: GgufFile, stage: Stage<B>) -> anyhow::Result<()> {
        generate_text(self, file, stage)
    }
}

fn generate_text<B: Backend>(
    args: Args,
    file: GgufFile,
    mut stage: Stage<B>,
) -> anyhow::Result<()> {
    let tok = Tokenizer::from_gguf(&file).context("building the tokenizer")?;
    let prompt = tok.encode(&args.prompt, true, false);
    if prompt.is_empty() {
        anyhow::bail!("the prompt is empty after tokenization");
    }
    if prompt.len() + args.n_predict > args.run.ctx_size {
        anyhow::bail!(
            "prompt ({} tokens) + {} to generate exceeds the context of {} (raise --ctx-size)",
            prompt.len(),
            args.n_predict,
            args.run.ctx_size
        );
    }
    let mut sampler = Sampler::new(SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        seed: args.seed,
        repetition_penalty: args.repetition_penalty,
        ..Default::default()
    });
    let started = std::time::Instant::now();
    let mut first_token_at = None;
    let mut stream = tok.text_stream();
    let mut stdout = std::io::stdout().lock();
    let mut write_err = None;
    let out = generate(&mut stage, &prompt, args.n_predict, &mut sampler, |s| {
        first_token_at.get_or_insert_with(std::time::Instant::now);
        let end = !args.ignore_eos && tok.is_end_of_generation(s.token);
        if !end {
            let text = stream.push(s.token);
            if let Err(e) = stdout
                .write_all(text.as_bytes())
                .and_then(|_| stdout.flush())
            {
                write_err = Some(e);
                return false;
            }
        }
        !end
    })?;
    if let Some(e) = write_err {
        return Err(e).context("writing to stdout");
    }
    stdout.write_all(stream.finish().as_bytes())?;
    stdout.flush()?;
    let prefill_s = first_token_at.map_or(0.0, |t| (t - started).as_secs_f64());
    let decode_s = first_token_at.map_or(0.0, |t| t.elapsed().as_secs_f64());
    tracing::info!(
        "prompt: {} tokens in {:.3}s ({:.1} tok/s); generated {} tokens, {:.1} tok/s",
        prompt.len(),
        prefill_s,
        prompt.len() as f64 / prefill_s.max(1e-9),
        out.len(),
        (out.len().saturating_sub(1)) as f64 / decode_s.max(1e-9)
    );
    Ok(())
}
