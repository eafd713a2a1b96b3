use half::f16;
use strata_model::profile::KvType;

use super::split_kv_chunk_tokens;
use crate::backend::AttentionBatch;
use crate::cpu::{CpuAct, CpuKvCache};
use crate::kv::{KvGeometry, KV_BLOCK_TOKENS};

pub(crate) const HEAD_DIM: usize = 64;
pub(crate) const N_HEADS: usize = 4;
const N_KV_HEADS: usize = 2;
/// Positions written: past 768 cells, so three chunk sizes come up.
pub(crate) const N_POS: usize = 800;
/// Bound on |split - exact| per output value: the f16 accumulator carries
/// ~11 bits of each chunk's weighted sum of values in [-0.5, 0.5].
const F16_ACC_TOLERANCE: f64 = 1e-3;

pub(crate) fn batch<'a>(
    positions: &'a [u32],
    token_seq: &'a [u32],
    tables: &'a [&'a [u32]],
    sinks: Option<&'a [f32]>,
) -> AttentionBatch<'a> {
    AttentionBatch {
        positions,
        token_seq,
        block_tables: tables,
        n_heads: N_HEADS,
        scale: 0.125,
        scale_query: false,
        window: None,
        sinks,
        decode: &[],
        tiled: &[],
    }
}

#[test]
fn split_from_512_cells_as_ggml_counts_them() {
    let (seq, table) = ([0u32], [0u32]);
    let tables: [&[u32]; 1] = [&table];
    let at = |pos: u32, threads| {
        let p = [pos];
        let b = AttentionBatch {
            decode: &[true],
            tiled: &[],
            ..batch(&p, &seq, &tables, None)
        };
        split_kv_chunk_tokens(0, &b, threads)
    };
    // Position 255 is cell 256: one 256-cell pad; position 256 needs 512.
    assert_eq!(at(255, 2), None);
    assert_eq!(at(256, 2), Some(256));
    assert_eq!(at(600, 4), Some(192));
    assert_eq!(at(600, 3), Some(256));
    assert_eq!(at(4095, 2), Some(2048));
    // The prefix cache keeps decode-written KV up to there (engine).
    assert_eq!(KvType::F16.decode_order_differs_from(), Some(256));
    // A prompt row (not flagged decode) or a sliding window: one chunk.
    assert_eq!(
        split_kv_chunk_tokens(0, &batch(&[600], &seq, &tables, None), 2),
        None
    );
    let windowed = AttentionBatch {
        decode: &[true],
        tiled: &[],
        window: Some(512),
        ..batch(&[600], &seq, &tables, None)
    };
    assert_eq!(split_kv_chunk_tokens(0, &windowed, 2), None);
}

/// Seeded values in [-0.5, 0.5), rounded to f16 so the exact reference
/// sees what the cache holds.
pub(crate) fn values(state: &mut u64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let x = (*state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            f16::from_f32(x).to_f32()
        })
        .collect()
}

/// Softmax(q.k * scale, sinks) . v in f64 for head `h` (query `q`) over
/// `lo..=pos`.
pub(crate) fn exact(
    q: &[f32],
    (k, v): (&CpuAct, &CpuAct),
    (lo, pos): (usize, usize),
    h: usize,
    sink: Option<f32>,
) -> Vec<f64> {
    let kvh = h / (N_HEADS / N_KV_HEADS);
    let cols = kvh * HEAD_DIM..(kvh + 1) * HEAD_DIM;
    let scores: Vec<f64> = (lo..=pos)
        .map(|p| {
            let dot: f64 = q
                .iter()
                .zip(&k.row(p)[cols.clone()])
                .map(|(a, b)| (a * b) as f64)
                .sum();
            0.125 * dot
        })
        .collect();
    let max = scores
        .iter()
        .chain(sink.map(|s| s as f64).as_ref())
        .fold(f64::MIN, |a, &b| a.max(b));
    let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let z = w.iter().sum::<f64>() + sink.map_or(0.0, |s| (s as f64 - max).exp());
    (0..HEAD_DIM)
        .map(|d| {
            (lo..=pos)
                .map(|p| w[p - lo] * v.row(p)[cols.start + d] as f64)
                .sum::<f64>()
                / z
        })
        .collect()
}

/// One layer's f16 cache holding seeded K/V at positions `0..N_POS` of
/// sequence 0 (on `tables[0]`), and a seeded query row.
pub(crate) struct Filled {
    pub cache: CpuKvCache,
    pub k: CpuAct,
    pub v: CpuAct,
    pub q: CpuAct,
}

pub(crate) fn filled(seed: u64, tables: &[&[u32]]) -> Filled {
    let mut state = seed;
    let geo = KvGeometry {
        n_layers: 1,
        n_kv_heads: N_KV_HEADS,
        head_dim_k: HEAD_DIM,
        head_dim_v: HEAD_DIM,
        kv_type: KvType::F16,
        n_blocks: N_POS.div_ceil(KV_BLOCK_TOKENS),
    };
    let act = |rows, cols, state: &mut u64| CpuAct {
        data: values(state, rows * cols),
        rows,
        cols,
    };
    let k = act(N_POS, geo.k_dim(), &mut state);
    let v = act(N_POS, geo.v_dim(), &mut state);
    let q = act(1, N_HEADS * HEAD_DIM, &mut state);
    let positions: Vec<u32> = (0..N_POS as u32).collect();
    let token_seq = vec![0u32; N_POS];
    let mut cache = CpuKvCache::new(geo).expect("cache");
    cache.write(0, &k, &v, &batch(&positions, &token_seq, tables, None));
    Filled { cache, k, v, q }
}

/// The split path agrees with exact attention, and its bits do not depend
/// on the thread count (a pool's workers differ in threads).
#[test]
fn split_path_matches_exact_attention_and_starts_at_512_cells() {
    let table: Vec<u32> = (0..N_POS.div_ceil(KV_BLOCK_TOKENS) as u32).rev().collect();
    let tables: [&[u32]; 1] = [&table];
    let Filled { cache, k, v, mut q } = filled(0x5EED_2015, &tables);
    // Larger queries: peaked softmaxes, so a chunk's max matters.
    q.data
        .iter_mut()
        .for_each(|x| *x = f16::from_f32(*x * 16.0).to_f32());
    let token_seq = vec![0u32; N_POS];

    let sinks = [0.5f32, 40.0, -1.0, 3.0];
    let pool = |n| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .expect("pool")
    };
    let (one, three) = (pool(1), pool(3));
    for pos in [255usize, 256, 300, 511, 767, 799] {
        for sink in [None, Some(&sinks[..])] {
            let p = [pos as u32];
            let b = AttentionBatch {
                decode: &[true],
                tiled: &[],
                ..batch(&p, &token_seq[..1], &tables, sink)
            };
            let a = one.install(|| cache.attend(0, &q, &b));
            let c = three.install(|| cache.attend(0, &q, &b));
            let mut worst = 0f64;
            for h in 0..N_HEADS {
                let qh = &q.row(0)[h * HEAD_DIM..(h + 1) * HEAD_DIM];
                let want = exact(qh, (&k, &v), (0, pos), h, sink.map(|s| s[h]));
                for (d, w) in want.iter().enumerate() {
                    let got = c.data[h * HEAD_DIM + d] as f64;
                    worst = worst.max((got - w).abs());
                }
            }
            eprintln!(
                "pos {pos} sinks {}: worst |split - exact| {worst:.2e}",
                sink.is_some()
            );
            assert!(
                worst < F16_ACC_TOLERANCE,
                "pos {pos} sinks {}: worst |split - exact| {worst}",
                sink.is_some()
            );
            let same = a
                .data
                .iter()
                .zip(&c.data)
                .all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "pos {pos}: 1 and 3 threads gave different bits");
        }
    }
}

/// A row's order follows its own flag, not its batch: a decode row gives
/// the bits it gives alone (split), a prompt row at the same position in
/// the same batch the one-chunk bits, and the two orders differ.
#[test]
fn each_row_takes_its_own_order_whatever_the_batch() {
    let table: Vec<u32> = (0..N_POS.div_ceil(KV_BLOCK_TOKENS) as u32).collect();
    // Two sequences on the same blocks, so both rows see the same K/V.
    let tables: [&[u32]; 2] = [&table, &table];
    let Filled { cache, q: q1, .. } = filled(0x0DDE_5EED, &tables);

    let pos = [700u32];
    let alone = |decode: &[bool]| {
        let b = AttentionBatch {
            decode,
            ..batch(&pos, &[0], &tables, None)
        };
        cache.attend(0, &q1, &b).data
    };
    let (split, one_chunk) = (alone(&[true]), alone(&[false]));
    assert_ne!(
        split, one_chunk,
        "the split and one-chunk orders gave the same bits"
    );

    let q2 = CpuAct {
        data: [q1.data.clone(), q1.data.clone()].concat(),
        rows: 2,
        cols: q1.cols,
    };
    for decode in [[true, false], [false, true]] {
        let b = AttentionBatch {
            decode: &decode,
            tiled: &[],
            ..batch(&[700, 700], &[0, 1], &tables, None)
        };
        let both = cache.attend(0, &q2, &b).data;
        let n = q1.cols;
        for (row, &d) in decode.iter().enumerate() {
            let want = if d { &split } else { &one_chunk };
            assert!(
                both[row * n..(row + 1) * n]
                    .iter()
                    .zip(want.iter())
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "row {row} (decode {d}) of a mixed batch differs from the row alone"
            );
        }
    }
}
