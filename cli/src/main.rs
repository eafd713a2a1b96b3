//! The `strata` binary: parses flags and calls library code.
use clap::Parser;

#[derive(Parser)]
#[command(name = "strata", version, about = "Pool GPUs over several machines into one LLM host")]
enum Cli {}

fn main() -> anyhow::Result<()> {
    let _ = Cli::parse();
    Ok(())
}
