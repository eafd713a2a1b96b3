//! Why a q4_0 KV cache makes the CUDA backend's log-probs part further from
//! the CPU's than f16 or q8_0 do. For each KV type it prints, after the
//! prompt, the largest top-5 log-prob difference from the CPU's whole run:
//!
//! - of the CUDA backend's whole run;
//! - of a CPU run of layers 1.. fed the CUDA backend's layer-0 output;
//! - of a CPU run of layers 1.. fed its own layer-0 output (a control:
//!   splitting the stage changes nothing, so it prints 0).
//!
//! The second run is CPU arithmetic throughout, given an input that differs
//! only by the CUDA backend's rounding in one layer. If it moves as far as
//! the CUDA run does, the deviation is the KV type's sensitivity to small
//! upstream differences, not an error in the CUDA kernels.
//!
//! Then, layer by layer, each backend runs one layer on the same input
//! (the CPU's hidden state before it) and the table gives the relative L2
//! difference of their outputs per KV type: a layer's own error, without
//! what earlier layers passed on. The last layer is left out (its stage
//! gives logits: the first table covers it). Both tables are for the
//! prompt's rows; decode steps over a quantized cache are held to the CPU's
//! by `kernels/tests/cuda_attention_quant.rs`.
//!
//!   STRATA_CUDA_EMULATOR=1 cargo run --release -p strata-tests --example kv_quant_sensitivity -- MODEL.gguf TOKEN_IDS
//!
//! (TOKEN_IDS comma-separated, e.g. the first prompt of a reference file:
//! `504,3575,282,4649,314` for SmolLM2, `2,818,5279,529,7001,563` for
//! Gemma-3, as docs/cuda.md quotes; a real GPU where there is one.)

use anyhow::Context;
use strata_kernels::cuda::{emulator, CudaBackend};
use strata_kernels::{Backend, CpuBackend};
use strata_model::arch::ModelSpec;
use strata_model::profile::KvType;
use strata_model::GgufFile;
use strata_tests::deviation::top5_deviation;
use strata_worker::sampler::log_sum_exp;
use strata_worker::{BatchSeq, LayerRange, LogitRows, Stage, StageInput, StageOutput};

/// Runs `range` on `input`: the hidden state out (as host floats) or the
/// last position's log-probs.
fn run<B: Backend>(
    backend: B,
    file: &GgufFile,
    range: LayerRange,
    kv: KvType,
    input: StageInputHost,
) -> anyhow::Result<Vec<f32>> {
    let n_tokens = match &input {
        StageInputHost::Tokens(t) | StageInputHost::Hidden(_, t) => t.len(),
    };
    let mut stage = Stage::load_kv(backend, file, range, n_tokens.next_multiple_of(32), kv)?;
    let input = match input {
        StageInputHost::Tokens(t) => StageInput::Tokens(t),
        StageInputHost::Hidden(h, tokens) => {
            let cols = h.len() / tokens.len();
            let hidden = stage.backend().act_from_host(&h, tokens.len(), cols)?;
            StageInput::Hidden { hidden, tokens }
        }
    };
    let batch = [BatchSeq {
        seq: 0,
        start_pos: 0,
        n_tokens,
        logits: LogitRows::Last,
        decode: false,
        tiled: Vec::new(),
    }];
    Ok(match stage.forward(&batch, input)? {
        StageOutput::Hidden(h) => stage.backend().act_to_host(&h)?,
        StageOutput::Logits(l) => {
            let l = l.concat();
            let lse = log_sum_exp(&l);
            l.iter().map(|x| x - lse).collect()
        }
    })
}

/// A stage's input as host values: the prompt's tokens, or a hidden state
/// (rows x width) with the tokens it stands for.
enum StageInputHost {
    Tokens(Vec<u32>),
    Hidden(Vec<f32>, Vec<u32>),
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: kv_quant_sensitivity MODEL.gguf TOKEN_IDS";
    let file = GgufFile::open(args.first().context(usage)?)?;
    let tokens: Vec<u32> = args
        .get(1)
        .context(usage)?
        .split(',')
        .map(|t| t.trim().parse())
        .collect::<Result<_, _>>()?;
    let n_layers = ModelSpec::from_gguf(&file)?.n_layers;
    emulator::install_unless_gpu()?;
    let gpu = CudaBackend::new(0)?;
    let cpu = CpuBackend::new();
    let all = LayerRange {
        first: 0,
        end: n_layers,
    };
    let first = LayerRange { first: 0, end: 1 };
    let rest = LayerRange {
        first: 1,
        end: n_layers,
    };
    println!("| KV | CUDA whole run | CPU fed CUDA's layer 0 | CPU fed its own layer 0 |");
    println!("| --- | ---: | ---: | ---: |");
    for kv in KvType::ALL {
        let tokens_in = || StageInputHost::Tokens(tokens.clone());
        let cpu_all = run(cpu.clone(), &file, all, kv, tokens_in())?;
        let gpu_all = run(gpu.clone(), &file, all, kv, tokens_in())?;
        let cpu_h0 = run(cpu.clone(), &file, first, kv, tokens_in())?;
        let gpu_h0 = run(gpu.clone(), &file, first, kv, tokens_in())?;
        let fed_gpu = StageInputHost::Hidden(gpu_h0, tokens.clone());
        let cpu_fed_gpu = run(cpu.clone(), &file, rest, kv, fed_gpu)?;
        let fed_cpu = StageInputHost::Hidden(cpu_h0, tokens.clone());
        let cpu_fed_cpu = run(cpu.clone(), &file, rest, kv, fed_cpu)?;
        println!(
            "| {kv:?} | {:.3} | {:.3} | {:.3} |",
            top5_deviation(&cpu_all, &gpu_all),
            top5_deviation(&cpu_all, &cpu_fed_gpu),
            top5_deviation(&cpu_all, &cpu_fed_cpu),
        );
    }
    println!();
    println!("| layer | own error, f16 KV | q8_0 KV | q4_0 KV |");
    println!("| ---: | ---: | ---: | ---: |");
    let mut inputs = KvType::ALL.map(|_| None::<Vec<f32>>);
    for layer in 0..n_layers - 1 {
        let range = LayerRange {
            first: layer,
            end: layer + 1,
        };
        let mut row = format!("| {layer} |");
        for (kv, input) in KvType::ALL.into_iter().zip(&mut inputs) {
            let feed = || match &*input {
                None => StageInputHost::Tokens(tokens.clone()),
                Some(h) => StageInputHost::Hidden(h.clone(), tokens.clone()),
            };
            let c = run(cpu.clone(), &file, range, kv, feed())?;
            let g = run(gpu.clone(), &file, range, kv, feed())?;
            row += &format!(" {:.2e} |", relative_l2(&c, &g));
            *input = Some(c);
        }
        println!("{row}");
    }
    Ok(())
}

fn relative_l2(reference: &[f32], other: &[f32]) -> f64 {
    let diff: f64 = reference
        .iter()
        .zip(other)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum();
    let norm: f64 = reference.iter().map(|a| (*a as f64).powi(2)).sum();
    (diff / norm.max(1e-30)).sqrt()
}
