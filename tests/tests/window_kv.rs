//! Sliding-window layers keep a ring of blocks per sequence when the plan
//! bounds the batch (`Stage::load_for`): a `strata synth` Gemma 4 (window
//! 16, rings of 3 blocks for batches of 64) gives, bit for bit, the logits
//! of full pools while its sequences run far past the ring, two at once;
//! on the CPU backend and on the CUDA one (the emulator where no GPU is).

use strata_kernels::cuda::{emulator, CudaBackend};
use strata_kernels::{Backend, CpuBackend};
use strata_model::arch::{Architecture, ModelSpec};
use strata_model::profile::{KvType, MemoryProfile, StageLoad};
use strata_model::GgufFile;
use strata_tests::deviation::argmax;
use strata_tests::synth;
use strata_worker::{BatchSeq, LayerRange, LogitRows, Stage, StageInput, StageOutput};

/// Decodes `prompts` together (one run per sequence per step, the prompts
/// first in one batch) for `steps` greedy steps; each sequence's logits.
fn decode<B: Backend>(
    stage: &mut Stage<B>,
    prompts: &[Vec<u32>],
    steps: usize,
) -> Vec<Vec<Vec<f32>>> {
    let mut runs: Vec<(usize, Vec<u32>)> = prompts.iter().map(|p| (0, p.clone())).collect();
    let mut out = vec![Vec::new(); prompts.len()];
    for _ in 0..steps {
        let batch: Vec<BatchSeq> = runs
            .iter()
            .enumerate()
            .map(|(i, (start, ids))| BatchSeq {
                seq: i as u64,
                start_pos: *start,
                n_tokens: ids.len(),
                logits: LogitRows::Last,
                decode: *start > 0,
                tiled: Vec::new(),
            })
            .collect();
        let ids = runs.iter().flat_map(|r| r.1.iter().copied()).collect();
        let StageOutput::Logits(rows) = stage.forward(&batch, StageInput::Tokens(ids)).unwrap()
        else {
            panic!("a whole-model stage returns logits");
        };
        for (i, row) in rows.into_iter().enumerate() {
            runs[i].0 += runs[i].1.len();
            runs[i].1 = vec![argmax(&row) as u32];
            out[i].push(row);
        }
    }
    for i in 0..prompts.len() {
        stage.release(i as u64);
    }
    out
}

/// Every row's logits of a 46-token run, then a 64-token run (the plan's
/// bound) after it: its first query reads back to 31 and its last write is
/// 109, 79 positions of the ring's 96 (a ring of 2 blocks would give 31's
/// slot to 95).
fn bounded_batch<B: Backend>(stage: &mut Stage<B>) -> Vec<Vec<f32>> {
    let tokens: Vec<u32> = (0..110).map(|i| (i * 13 + 2) % 250).collect();
    let mut rows = Vec::new();
    for (start, end) in [(0, 46), (46, 110)] {
        let batch = [BatchSeq {
            seq: 5,
            start_pos: start,
            n_tokens: end - start,
            logits: LogitRows::From(0),
            decode: false,
            tiled: Vec::new(),
        }];
        let input = StageInput::Tokens(tokens[start..end].to_vec());
        let StageOutput::Logits(l) = stage.forward(&batch, input).unwrap() else {
            panic!("a whole-model stage returns logits");
        };
        rows.extend(l);
    }
    stage.release(5);
    rows
}

struct Model {
    _dir: tempfile::TempDir,
    file: GgufFile,
    range: LayerRange,
    /// The plan's load (rings), and the same with no batch bound (full pools).
    ringed: StageLoad,
    full: StageLoad,
}

fn gemma4() -> Model {
    let dir = tempfile::tempdir().unwrap();
    let file = synth(dir.path(), Architecture::Gemma4, "tiny", "Q8_0");
    let n_layers = ModelSpec::from_gguf(&file).unwrap().n_layers;
    let ringed = StageLoad::for_sequences(1024, 2, KvType::F16, 64);
    Model {
        _dir: dir,
        file,
        range: LayerRange {
            first: 0,
            end: n_layers,
        },
        ringed,
        full: StageLoad {
            batch_tokens: 0,
            ..ringed
        },
    }
}

/// Both loads' logits on `backend`: decoding past the rings twice, and the
/// bounded batch.
fn compare<B: Backend>(m: &Model, backend: impl Fn() -> B, steps: usize) -> Stage<B> {
    let prompts = [
        (0..61).map(|i| (i * 37 + 5) % 250).collect::<Vec<u32>>(),
        (0..3).map(|i| (i * 11 + 60) % 250).collect(),
    ];
    let mut ring = Stage::load_for(backend(), &m.file, m.range, &m.ringed).unwrap();
    let mut full = Stage::load_for(backend(), &m.file, m.range, &m.full).unwrap();
    assert_eq!(
        decode(&mut ring, &prompts, steps),
        decode(&mut full, &prompts, steps)
    );
    assert_eq!(bounded_batch(&mut ring), bounded_batch(&mut full));
    ring
}

#[test]
fn window_rings_give_the_full_pools_logits() {
    let m = gemma4();
    // The rings are what the plan counts: far less than full pools.
    let spec = ModelSpec::from_gguf(&m.file).unwrap();
    let profile = MemoryProfile::from_gguf(&m.file, &spec);
    let (ringed, whole) = (
        profile.stage_memory(m.range, &m.ringed).kv_bytes,
        profile.stage_memory(m.range, &m.full).kv_bytes,
    );
    assert!(ringed * 3 < whole, "rings {ringed} vs full pools {whole}");

    // 61 + 200 positions: the 3-block rings (96 positions) wrap twice.
    let mut ring = compare(&m, CpuBackend::new, 200);

    // A batch longer than the plan's bound would overwrite what it attends:
    // refused, not computed wrong.
    let long: Vec<u32> = (0..200).map(|i| (i * 7 + 1) % 250).collect();
    let batch = [BatchSeq {
        seq: 9,
        start_pos: 0,
        n_tokens: long.len(),
        logits: LogitRows::Last,
        decode: false,
        tiled: Vec::new(),
    }];
    let err = ring
        .forward(&batch, StageInput::Tokens(long))
        .err()
        .expect("a batch past the ring");
    assert!(err.to_string().contains("sliding-window cache"), "{err}");
}

#[test]
fn window_rings_give_the_full_pools_logits_on_cuda() {
    emulator::install_unless_gpu().expect("the CUDA emulator");
    compare(
        &gemma4(),
        || CudaBackend::new(0).expect("CUDA device 0"),
        120,
    );
}
