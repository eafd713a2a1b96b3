//! Where the CUDA backend's hidden state parts from the CPU backend's:
//! runs the first k layers of a model on both, for every k, on the same
//! prompt, and prints the relative L2 difference of the stage outputs. A
//! smooth growth is rounding; a jump at one layer points at an op.
//!
//!   STRATA_CUDA_EMULATOR=1 cargo run --release -p strata-tests --example cuda_layer_diff -- MODEL.gguf [TOKENS] [f16|q8_0|q4_0]
//!
//! (a real GPU where there is one, else set STRATA_CUDA_EMULATOR=1).

use anyhow::Context;
use strata_kernels::cuda::{emulator, CudaBackend};
use strata_kernels::{Backend, CpuBackend};
use strata_model::arch::ModelSpec;
use strata_model::profile::KvType;
use strata_model::GgufFile;
use strata_worker::{BatchSeq, LayerRange, LogitRows, Stage, StageInput, StageOutput};

fn hidden<B: Backend>(
    backend: B,
    file: &GgufFile,
    end: usize,
    tokens: &[u32],
    kv: KvType,
) -> anyhow::Result<Vec<f32>> {
    let mut stage = Stage::load_kv(backend, file, LayerRange { first: 0, end }, 256, kv)?;
    let batch = [BatchSeq {
        seq: 0,
        start_pos: 0,
        n_tokens: tokens.len(),
        logits: LogitRows::Last,
        decode: false,
        tiled: Vec::new(),
    }];
    match stage.forward(&batch, StageInput::Tokens(tokens.to_vec()))? {
        StageOutput::Hidden(h) => Ok(stage.backend().act_to_host(&h)?),
        StageOutput::Logits(l) => Ok(l.concat()),
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args
        .first()
        .context("usage: cuda_layer_diff MODEL.gguf [TOKENS] [KV TYPE]")?;
    let n: usize = args.get(1).map_or(Ok(12), |s| s.parse())?;
    let kv = match args.get(2) {
        Some(s) => KvType::from_name(s).context("KV type: f16, q8_0 or q4_0")?,
        None => KvType::F16,
    };
    let file = GgufFile::open(path)?;
    let hp = ModelSpec::from_gguf(&file)?;
    emulator::install_unless_gpu()?;
    let gpu = CudaBackend::new(0)?;
    println!("{} on {}", path, Backend::name(&gpu));
    let tokens: Vec<u32> = (0..n as u32)
        .map(|i| (i * 7919 + 17) % hp.vocab_size as u32)
        .collect();
    println!("| layers | rel L2 (CUDA vs CPU) | max abs | rms |");
    println!("| ---: | ---: | ---: | ---: |");
    for end in 1..=hp.n_layers {
        let c = hidden(CpuBackend::new(), &file, end, &tokens, kv)?;
        let g = hidden(gpu.clone(), &file, end, &tokens, kv)?;
        let num: f64 = c
            .iter()
            .zip(&g)
            .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
            .sum();
        let den: f64 = c.iter().map(|a| (*a as f64).powi(2)).sum();
        let max = c
            .iter()
            .zip(&g)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let rms = (den / c.len() as f64).sqrt();
        println!(
            "| {end} | {:.2e} | {max:.3} | {rms:.3} |",
            (num / den.max(1e-30)).sqrt()
        );
    }
    Ok(())
}
