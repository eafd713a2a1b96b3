//! Qwen3.5's recurrent state is per sequence: two sequences of different
//! lengths decoded together in one stage's batches give the logits each
//! gives alone, bit for bit (a `strata synth` qwen35 Q8_0 model: its
//! matmuls round each row the same whatever the batch), and a sequence that
//! takes a released slot starts from zero.

use strata_kernels::CpuBackend;
use strata_model::arch::{Architecture, ModelSpec};
use strata_model::profile::{KvType, StageLoad};
use strata_model::GgufFile;
use strata_tests::deviation::argmax;
use strata_tests::synth;
use strata_worker::{BatchSeq, LayerRange, LogitRows, Stage, StageInput, StageOutput};

const STEPS: usize = 8;

fn stage(file: &GgufFile, sequences: usize) -> Stage<CpuBackend> {
    let n_layers = ModelSpec::from_gguf(file).unwrap().n_layers;
    let range = LayerRange {
        first: 0,
        end: n_layers,
    };
    let load = StageLoad::for_sequences(512, sequences, KvType::F16, 64);
    Stage::load_for(CpuBackend::new(), file, range, &load).unwrap()
}

/// Runs `runs` (sequence, start, tokens) as one batch; each run's last logits.
fn step(stage: &mut Stage<CpuBackend>, runs: &[(u64, usize, Vec<u32>)]) -> Vec<Vec<f32>> {
    let batch: Vec<BatchSeq> = runs
        .iter()
        .map(|(seq, start, ids)| BatchSeq {
            seq: *seq,
            start_pos: *start,
            n_tokens: ids.len(),
            logits: LogitRows::Last,
            // Runs after a sequence's first are its generated tokens.
            decode: *start > 0,
            tiled: Vec::new(),
        })
        .collect();
    let ids = runs.iter().flat_map(|r| r.2.iter().copied()).collect();
    match stage.forward(&batch, StageInput::Tokens(ids)).unwrap() {
        StageOutput::Logits(rows) => rows,
        StageOutput::Hidden(_) => panic!("a whole-model stage returns logits"),
    }
}

/// Greedy decoding of several sequences in shared batches: every step
/// holds one run per sequence. Returns each sequence's logits per step.
fn decode_together(stage: &mut Stage<CpuBackend>, prompts: &[(u64, &[u32])]) -> Vec<Vec<Vec<f32>>> {
    let mut runs: Vec<(u64, usize, Vec<u32>)> =
        prompts.iter().map(|(s, p)| (*s, 0, p.to_vec())).collect();
    let mut out = vec![Vec::new(); prompts.len()];
    for _ in 0..STEPS {
        let rows = step(stage, &runs);
        for (i, row) in rows.into_iter().enumerate() {
            let next = argmax(&row) as u32;
            runs[i].1 += runs[i].2.len();
            runs[i].2 = vec![next];
            out[i].push(row);
        }
    }
    for (seq, _) in prompts {
        stage.release(*seq);
    }
    out
}

#[test]
fn sequences_decoded_together_match_each_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = synth(dir.path(), Architecture::Qwen35, "tiny", "Q8_0");
    let long: Vec<u32> = (0..41).map(|i| (i * 37 + 5) % 250).collect();
    let short: Vec<u32> = (0..13).map(|i| (i * 11 + 60) % 250).collect();

    let mut s = stage(&file, 2);
    let long_alone = decode_together(&mut s, &[(1, &long)]).remove(0);
    let short_alone = decode_together(&mut s, &[(2, &short)]).remove(0);
    let both = decode_together(&mut s, &[(3, &long), (4, &short)]);
    assert_eq!(
        both[0], long_alone,
        "the long sequence beside the short one"
    );
    assert_eq!(
        both[1], short_alone,
        "the short sequence beside the long one"
    );
    assert_eq!(
        s.state_slots().held(),
        0,
        "released sequences give their slots back"
    );

    // A slot left with state by a finished sequence is zeroed for the next.
    let _ = decode_together(&mut s, &[(5, &long), (6, &long)]);
    let again = decode_together(&mut s, &[(7, &short)]).remove(0);
    assert_eq!(again, short_alone, "a reused slot starts from zero");

    // A third sequence while two hold both slots is refused, not mixed in.
    step(&mut s, &[(8, 0, long.clone()), (9, 0, short.clone())]);
    let batch = [BatchSeq {
        seq: 10,
        start_pos: 0,
        n_tokens: 1,
        logits: LogitRows::Last,
        decode: false,
        tiled: Vec::new(),
    }];
    let err = s
        .forward(&batch, StageInput::Tokens(vec![1]))
        .err()
        .expect("no slot is free");
    assert!(
        err.to_string().contains("no free recurrent state slot"),
        "{err}"
    );
}
