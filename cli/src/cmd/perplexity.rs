use anyhow::Context;
use strata_model::tokenizer::Tokenizer;
use strata_worker::generate::perplexity;

use super::RunArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub run: RunArgs,
    /// Text file to score.
    #[arg(long, short = 'f')]
    pub file: std::path::PathBuf,
    /// Tokens per chunk (llama-perplexity's -c).
    #[arg(long, default_value_t = 512)]
    pub chunk: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let (file, mut stage) = args.run.load()?;
    let tok = Tokenizer::from_gguf(&file)?;
    let tokens = tok.encode(&text, true, false);
    let bos = tok.add_bos().then(|| tok.bos()).flatten();
    let running = perplexity(&mut stage, &tokens, args.chunk, bos)?;
    for (i, p) in running.iter().enumerate() {
        eprint!("[{}]{p:.4} ", i + 1);
    }
    eprintln!();
    match running.last() {
        Some(p) => println!(
            "perplexity: {p:.4} over {} chunks of {}",
            running.len(),
            args.chunk
        ),
        None => anyhow::bail!(
            "{} has fewer than {} tokens",
            args.file.display(),
            args.chunk
        ),
    }
    Ok(())
}
