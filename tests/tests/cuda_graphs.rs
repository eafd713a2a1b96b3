//! Decode steps replayed as CUDA graphs (`Backend::run_layers`) give what
//! the same steps give launched op by op: the same tokens and the same
//! logits, for one sequence and for two decoded together, across KV block
//! boundaries (the block tables grow under a recorded graph) and across a
//! context length that changes attention's split count (a new graph).
//! Runs on the CUDA emulator in CI, whose graphs follow a GPU's rules
//! (kernels/tests/cuda_emulator_graphs.rs), and on a GPU where there is one.

use strata_kernels::cuda::{emulator, CudaBackend};
use strata_kernels::{Backend, BatchIndex, KernelError};
use strata_model::arch::{Architecture, ModelSpec};
use strata_model::synth::{QuantScheme, SynthSpec};
use strata_model::GgufFile;
use strata_worker::generate::prefill;
use strata_worker::stage::{BatchSeq, LogitRows, StageInput, StageOutput};
use strata_worker::{LayerRange, Stage};

/// Decode steps per case: the prompts end a few tokens before a KV block
/// boundary and before 128 positions, so the steps cross both.
const STEPS: usize = 10;

fn stage(file: &GgufFile, graphs: bool) -> Stage<CudaBackend> {
    emulator::install_unless_gpu().expect("the CUDA emulator");
    let gpu = CudaBackend::new(0).expect("CUDA device 0");
    let spec = ModelSpec::from_gguf(file).unwrap();
    let range = LayerRange {
        first: 0,
        end: spec.n_layers,
    };
    let mut stage = Stage::load(gpu, file, range, 512).unwrap();
    stage.layer_runs_mut().set_enabled(graphs);
    stage
}

fn argmax(row: &[f32]) -> u32 {
    (0..row.len())
        .max_by(|&a, &b| row[a].total_cmp(&row[b]))
        .unwrap() as u32
}

/// Greedy decoding of two sequences in one batch a step; the logits of
/// every step, both rows.
fn decode_two(stage: &mut Stage<CudaBackend>, prompts: [&[u32]; 2]) -> Vec<Vec<f32>> {
    let mut next = [0u32; 2];
    for (seq, prompt) in prompts.iter().enumerate() {
        let logits = prefill(stage, seq as u64, 0, prompt, None).unwrap();
        next[seq] = argmax(&logits[0]);
    }
    let mut all = Vec::new();
    for i in 0..STEPS {
        let batch: Vec<BatchSeq> = (0..2)
            .map(|s| BatchSeq {
                seq: s as u64,
                start_pos: prompts[s].len() + i,
                n_tokens: 1,
                logits: LogitRows::Last,
                decode: true,
                tiled: Vec::new(),
            })
            .collect();
        let StageOutput::Logits(rows) = stage
            .forward(&batch, StageInput::Tokens(next.to_vec()))
            .unwrap()
        else {
            panic!("the last stage gives logits");
        };
        for (s, row) in rows.iter().enumerate() {
            next[s] = argmax(row);
        }
        all.extend(rows);
    }
    all
}

/// One sequence, one token a step.
fn decode_one(stage: &mut Stage<CudaBackend>, prompt: &[u32]) -> Vec<Vec<f32>> {
    let mut logits = prefill(stage, 7, 0, prompt, None).unwrap();
    let mut all = Vec::new();
    for i in 0..STEPS {
        let next = argmax(&logits[0]);
        logits = prefill(stage, 7, prompt.len() + i, &[next], None).unwrap();
        all.push(logits[0].clone());
    }
    stage.release(7);
    all
}

fn prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32).map(|i| (i * 37 + salt) % 250).collect()
}

/// The graphed and the eager run of every case; returns the replays.
fn compare(label: &str, file: &GgufFile) -> u64 {
    let (a, b) = (prompt(124, 5), prompt(29, 11));
    let run = |graphs: bool| {
        let mut s = stage(file, graphs);
        let mut logits = decode_one(&mut s, &a);
        logits.extend(decode_two(&mut s, [&b, &a]));
        (logits, s.layer_runs_mut().replays())
    };
    let (eager, none) = run(false);
    let (graphed, replays) = run(true);
    assert_eq!(none, 0, "{label}: graphs off, yet replays");
    for (i, (e, g)) in eager.iter().zip(&graphed).enumerate() {
        assert_eq!(argmax(e), argmax(g), "{label}: row {i} picks another token");
        let worst = e
            .iter()
            .zip(g)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= 1e-5,
            "{label}: row {i}: a logit differs by {worst} between graph and eager"
        );
    }
    println!("{label}: {replays} of {} decode steps replayed", 2 * STEPS);
    replays
}

fn synth(dir: &std::path::Path, arch: Architecture, quant: &str) -> GgufFile {
    let mut spec =
        SynthSpec::from_preset(arch, "tiny", QuantScheme::parse(quant).unwrap()).unwrap();
    spec.shape.n_layers = spec.shape.n_layers.min(3);
    let path = dir.join(format!("{arch}-{quant}.gguf"));
    spec.write(&path, |_, _| {}).unwrap();
    GgufFile::open(&path).unwrap()
}

#[test]
fn graph_replays_equal_eager_decoding() {
    let dir = tempfile::tempdir().unwrap();
    for (arch, quant) in [
        (Architecture::Llama, "Q4_K_M"),
        // A sliding window and post-norms.
        (Architecture::Gemma3, "Q6_K"),
        // Experts routed on the device, inside the graph.
        (Architecture::Qwen3Moe, "Q8_0"),
        // Sinks, biases, YaRN.
        (Architecture::GptOss, "MXFP4"),
        // Attention temperature from the positions on the device.
        (Architecture::Mistral3, "Q8_0"),
    ] {
        let file = synth(dir.path(), arch, quant);
        let replays = compare(&format!("{arch} {quant}"), &file);
        // Each shape is recorded on its second run; crossing 128 positions
        // (a new split count) records again.
        assert!(
            replays >= (2 * STEPS - 6) as u64,
            "{arch} {quant}: only {replays} steps replayed"
        );
    }
}

/// A run that copies host data (here a bias that changes every step)
/// cannot be recorded: its capture fails, as on a GPU, and every step runs
/// eagerly with the step's own values (a replay would add a stale bias).
#[test]
fn a_run_that_copies_from_the_host_runs_eagerly() {
    emulator::install_unless_gpu().expect("the CUDA emulator");
    let gpu = CudaBackend::new(0).expect("CUDA device 0");
    let mut runs = gpu.layer_runs();
    let table = [3u32];
    let tables = [&table[..]];
    let index = BatchIndex {
        positions: &[5],
        token_seq: &[0],
        block_tables: &tables,
        seq_slots: &[],
    };
    for step in 0..4 {
        let x = gpu.act_from_host(&[1.0; 8], 1, 8).unwrap();
        let mut add_step = |mut x| -> Result<_, KernelError> {
            let bias = gpu.act_from_host(&[step as f32; 8], 1, 8)?;
            gpu.add_assign(&mut x, &bias)?;
            Ok(x)
        };
        let y = gpu.run_layers(&mut runs, &index, x, &mut add_step).unwrap();
        assert_eq!(gpu.act_to_host(&y).unwrap(), [1.0 + step as f32; 8]);
    }
    assert_eq!(runs.replays(), 0);
}
