//! The `strata` binary: parses flags and calls library code. Logs go to
//! stderr; stdout carries only what a command produces.

mod cmd;

/// Activations are allocated per op; the system allocator hands large ones
/// back to the kernel and faults them in zeroed again each time (a tenth of
/// prompt time in profiles). mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Pool GPUs over several machines into one LLM host"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a model's architecture, shapes, tensor types and memory profile.
    Inspect(cmd::inspect::Args),
    /// Generate text from a raw prompt (no chat template).
    Generate(cmd::generate::Args),
    /// Measure prompt and generation speed (like llama-bench pp/tg).
    Bench(cmd::bench::Args),
    /// Measure perplexity over a text file (like llama-perplexity).
    Perplexity(cmd::perplexity::Args),
    /// Write a random-weight GGUF with a real model's shape.
    Synth(cmd::synth::Args),
    /// Show where each layer would go over a set of devices (loads nothing).
    Plan(cmd::plan::Args),
    /// Serve a model over the OpenAI API, on workers or in this process.
    Serve(cmd::serve::Args),
    /// Serve a layer range of a model to a coordinator (gRPC, token required).
    Worker(cmd::worker::Args),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let result = match Cli::parse().command {
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Perplexity(a) => cmd::perplexity::run(a),
        Command::Synth(a) => cmd::synth::run(a),
        Command::Plan(a) => cmd::plan::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Worker(a) => cmd::worker::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
