use crate::backend::AttentionBatch;
use crate::cpu::attention_split::tests::{
    batch, exact, filled, values, Filled, HEAD_DIM, N_HEADS, N_POS,
};
use crate::cpu::CpuAct;
use crate::kv::KV_BLOCK_TOKENS;

/// Bound on |tiled - exact| per output value: V summed in f32 (measured
/// 4e-8), where the one-chunk path's f16 sum is off by up to 1e-3.
const F32_ACC_TOLERANCE: f64 = 1e-6;

/// Prompt rows at `positions` of sequence 0, queries seeded from `seed`.
fn queries(seed: u64, rows: usize) -> CpuAct {
    let mut state = seed;
    CpuAct {
        data: values(&mut state, rows * N_HEADS * HEAD_DIM),
        rows,
        cols: N_HEADS * HEAD_DIM,
    }
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// 100 tiled rows (two blocks of up to 64, crossing tiles of 64 keys) agree
/// with exact attention, with and without a sliding window; each gives the
/// bits it gives alone, so a row's result does not depend on its batch;
/// and the tiled order is not the one-chunk order.
#[test]
fn tiled_rows_match_exact_attention_and_do_not_depend_on_their_batch() {
    let table: Vec<u32> = (0..N_POS.div_ceil(KV_BLOCK_TOKENS) as u32).rev().collect();
    let tables: [&[u32]; 1] = [&table];
    let Filled { cache, k, v, .. } = filled(0x711E_D5EE, &tables);
    let first = 650usize;
    let rows = N_POS - first;
    let q = queries(0x0F_7115, rows);
    let positions: Vec<u32> = (first as u32..N_POS as u32).collect();
    let token_seq = vec![0u32; rows];
    let all_tiled = vec![true; rows];
    let sinks = [0.5f32, 40.0, -1.0, 3.0];
    for window in [None, Some(100usize)] {
        for sink in [None, Some(&sinks[..])] {
            let b = AttentionBatch {
                window,
                tiled: &all_tiled,
                ..batch(&positions, &token_seq, &tables, sink)
            };
            let got = cache.attend(0, &q, &b);
            let mut worst = 0f64;
            for (r, &pos) in positions.iter().enumerate() {
                let pos = pos as usize;
                let lo = window.map_or(0, |w| (pos + 1).saturating_sub(w));
                for h in 0..N_HEADS {
                    let qh = &q.row(r)[h * HEAD_DIM..(h + 1) * HEAD_DIM];
                    let want = exact(qh, (&k, &v), (lo, pos), h, sink.map(|s| s[h]));
                    let row = &got.row(r)[h * HEAD_DIM..(h + 1) * HEAD_DIM];
                    for (g, w) in row.iter().zip(&want) {
                        worst = worst.max((*g as f64 - w).abs());
                    }
                }
            }
            eprintln!(
                "window {window:?} sinks {}: worst |tiled - exact| {worst:.2e}",
                sink.is_some()
            );
            assert!(
                worst < F32_ACC_TOLERANCE,
                "window {window:?}: worst |tiled - exact| {worst}"
            );

            for r in [0, 37, 63, 64, 99] {
                let one = CpuAct {
                    data: q.row(r).to_vec(),
                    rows: 1,
                    cols: q.cols,
                };
                let alone = |tiled: &[bool]| {
                    let b = AttentionBatch {
                        window,
                        tiled,
                        ..batch(&positions[r..r + 1], &token_seq[..1], &tables, sink)
                    };
                    cache.attend(0, &one, &b).data
                };
                let tiled_alone = alone(&[true]);
                assert!(
                    same_bits(got.row(r), &tiled_alone),
                    "window {window:?}: row {r} of the batch differs from the row alone"
                );
                assert!(
                    !same_bits(&tiled_alone, &alone(&[])),
                    "row {r}: the tiled and one-chunk orders gave the same bits"
                );
            }
        }
    }
}
