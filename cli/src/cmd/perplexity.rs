use anyhow::Context;
use strata_kernels::Backend;
use strata_model::tokenizer::Tokenizer;
use strata_model::GgufFile;
use strata_worker::generate::perplexity;
use strata_worker::Stage;

use super::{RunArgs, StageJob};

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

/// On the GPU when there is one (or `--gpu N`), like `generate` and `bench`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let run = args.run.clone();
    run.run(args)
}

impl StageJob for Args {
    fn run<B: Backend>(self, file: GgufFile, mut stage: Stage<B>) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(&self.file)
            .with_context(|| format!("reading {}", self.file.display()))?;
        let tok = Tokenizer::from_gguf(&file)?;
        let tokens = tok.encode(&text, true, false);
        let bos = tok.add_bos().then(|| tok.bos()).flatten();
        let running = perplexity(&mut stage, &tokens, self.chunk, bos)?;
        for (i, p) in running.iter().enumerate() {
            eprint!("[{}]{p:.4} ", i + 1);
        }
        eprintln!();
        match running.last() {
            Some(p) => println!(
                "perplexity: {p:.4} over {} chunks of {}",
                running.len(),
                self.chunk
            ),
            None => anyhow::bail!(
                "{} has fewer than {} tokens",
                self.file.display(),
                self.chunk
            ),
        }
        Ok(())
    }
}
