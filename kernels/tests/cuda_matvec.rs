//! The matrix-vector kernels (`mmvq_*`, `mmv_*` and their `_id` forms) on
//! the shapes their work split treats specially: a block computes two
//! rows with up to 4 warps splitting the columns, one 32-weight chunk (8
//! float elements) per thread a step. So: row counts that are not a
//! multiple of two (the last block repeats a row it must not write), rows of
//! one quant block (one chunk, most threads idle), rows wider than one pass
//! of 128 threads (5120 columns: 160 chunks), float rows whose width is not
//! a multiple of 8 (the one-element path), and batches of 1, 3, 8 and 13
//! (13: two launches of at most 8 tokens).
//!
//! The reference is exact up to float rounding, so the tolerance is tight:
//! the dequantized weights (`dequantize_row`) times the activations
//! quantized to int8 per 32 values exactly as `quantize_act` does (scale
//! amax / 127, levels rounded to nearest even), summed in f64. Each output
//! may differ from it by 1e-4 of the sum of its terms' magnitudes (f32
//! scale products and sums; no cancellation can hide behind that measure).

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use strata_kernels::cuda::CudaBackend;
use strata_kernels::Backend;
use strata_model::GgmlType;

mod common;
use common::*;

/// Largest |got - want| / sum |w * x| allowed per output.
const TOLERANCE: f64 = 1e-4;

/// Every type with a kernel: the op tests' types and Q8_K.
fn types() -> Vec<GgmlType> {
    WEIGHT_TYPES
        .iter()
        .copied()
        .chain([GgmlType::Q8K])
        .collect()
}

fn is_float(dtype: GgmlType) -> bool {
    matches!(dtype, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

/// The activations as the kernel sees them: for quantized weights, int8
/// per 32 values with an f32 scale (quantize_act); float weights read them
/// as they are.
fn kernel_activations(dtype: GgmlType, x: &[f32]) -> Vec<f64> {
    if is_float(dtype) {
        return x.iter().map(|&v| v as f64).collect();
    }
    x.chunks(32)
        .flat_map(|c| {
            let amax = c.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            c.iter()
                .map(move |&v| d as f64 * (v * inv).round_ties_even() as f64)
        })
        .collect()
}

/// Checks `got` (outputs x rows) against `W[w] . x[i]` where
/// `(w, i) = pick(o, r)` for output o, row r.
fn check(
    what: &str,
    got: &[f32],
    deq: &[f32],
    xa: &[f64],
    cols: usize,
    rows: usize,
    pick: impl Fn(usize, usize) -> (usize, usize),
) {
    assert_eq!(got.len() % rows, 0, "{what}: output length");
    for (i, &g) in got.iter().enumerate() {
        let (o, r) = (i / rows, i % rows);
        let (w, x) = pick(o, r);
        let (w, x) = (w * cols, x * cols);
        let (mut want, mut scale) = (0.0f64, 0.0f64);
        for c in 0..cols {
            let term = deq[w + c] as f64 * xa[x + c];
            want += term;
            scale += term.abs();
        }
        let err = (g as f64 - want).abs() / scale.max(1e-30);
        assert!(
            g.is_finite() && err <= TOLERANCE,
            "{what}: output {o} row {r}: got {g}, want {want} (error {err:.2e} of the terms)"
        );
    }
}

/// A random `rows x cols` weight of `dtype` times batches of 1, 3, 8 and
/// 13 tokens, each output checked against the exact product.
fn check_matmul(g: &CudaBackend, rng: &mut ChaCha8Rng, dtype: GgmlType, rows: usize, cols: usize) {
    let (bytes, deq) = quantized(dtype, &random(rng, rows * cols, 1.0), cols);
    let w = g
        .load_weight("w", dtype, &[cols as u64, rows as u64], &bytes)
        .unwrap();
    for tokens in [1usize, 3, 8, 13] {
        let x = random(rng, tokens * cols, 1.0);
        let got = g
            .act_to_host(
                &g.matmul(&w, &g.act_from_host(&x, tokens, cols).unwrap())
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(got.len(), tokens * rows);
        check(
            &format!("{dtype} {rows}x{cols} batch {tokens}"),
            &got,
            &deq,
            &kernel_activations(dtype, &x),
            cols,
            rows,
            |t, r| (r, t),
        );
    }
}

#[test]
fn matvec_edge_shapes_for_every_type() {
    let g = gpu();
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    for dtype in types() {
        let block = if is_float(dtype) {
            32
        } else {
            dtype.block_elems()
        };
        let shapes = [
            (1, block),
            (3, block),
            (7, 3 * block),
            (65, block),
            (5, 5120),
        ];
        for (rows, cols) in shapes {
            check_matmul(&g, &mut rng, dtype, rows, cols);
        }
    }
}

#[test]
fn float_rows_of_any_width() {
    let g = gpu();
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    for dtype in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
        // 1, 4, 36, 100: not a multiple of 8 (one element a step); 8 and
        // 40: 8 a step, one warp.
        for cols in [1usize, 4, 8, 36, 40, 100] {
            for rows in [1usize, 3] {
                check_matmul(&g, &mut rng, dtype, rows, cols);
            }
        }
    }
}

#[test]
fn matmul_id_edge_shapes_for_every_type() {
    let g = gpu();
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    for dtype in types() {
        let block = if is_float(dtype) {
            32
        } else {
            dtype.block_elems()
        };
        // Rows per expert odd (the last block of each expert repeats a row),
        // one block wide or wider than a pass of the block's threads.
        for (rows, cols) in [(1, block), (5, block), (3, 5120)] {
            let (bytes, deq) =
                quantized(dtype, &random(&mut rng, N_EXPERT * rows * cols, 1.0), cols);
            let dims = [cols as u64, rows as u64, N_EXPERT as u64];
            let w = g.load_weight("exps", dtype, &dims, &bytes).unwrap();
            for tokens in [1usize, 3, 8, 13] {
                let ids = expert_ids(&mut rng, tokens);
                let routing = g
                    .routing(&ids, &vec![1.0; ids.len()], N_USED, N_EXPERT)
                    .unwrap();
                for per_slot in [false, true] {
                    let x_rows = if per_slot { ids.len() } else { tokens };
                    let x = random(&mut rng, x_rows * cols, 1.0);
                    let got = g
                        .matmul_id(&w, &g.act_from_host(&x, x_rows, cols).unwrap(), &routing)
                        .unwrap();
                    check(
                        &format!("{dtype} {rows}x{cols} batch {tokens} per_slot {per_slot}"),
                        &g.act_to_host(&got).unwrap(),
                        &deq,
                        &kernel_activations(dtype, &x),
                        cols,
                        rows,
                        |s, r| {
                            let x = if per_slot { s } else { s / N_USED };
                            (ids[s] as usize * rows + r, x)
                        },
                    );
                }
            }
        }
    }
}

/// `matmul_each` gives each weight's `matmul`, bit for bit: a decode batch
/// by quantized weights (one shared quantization of the input), one that
/// mixes a float weight in, and a prompt batch (the gemm, weight by
/// weight); shapes are checked before any work.
#[test]
fn matmul_each_equals_matmul_weight_by_weight() {
    let g = gpu();
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    let cols = 256;
    let load = |rng: &mut ChaCha8Rng, dtype: GgmlType, rows: usize| {
        let (bytes, _) = quantized(dtype, &random(rng, rows * cols, 1.0), cols);
        g.load_weight("w", dtype, &[cols as u64, rows as u64], &bytes)
            .unwrap()
    };
    let (q, k, v) = (
        load(&mut rng, GgmlType::Q4K, 64),
        load(&mut rng, GgmlType::Q8_0, 32),
        load(&mut rng, GgmlType::Q6K, 32),
    );
    let f = load(&mut rng, GgmlType::F16, 48);
    for (weights, tokens) in [
        (vec![&q, &k, &v], 1usize),
        (vec![&q, &k, &v], 8),
        (vec![&q, &f], 3),
        (vec![&q, &k, &v], 13),
    ] {
        let x = g
            .act_from_host(&random(&mut rng, tokens * cols, 1.0), tokens, cols)
            .unwrap();
        let each = g.matmul_each(&weights, &x).unwrap();
        assert_eq!(each.len(), weights.len());
        for (w, got) in weights.iter().zip(&each) {
            let want = g.matmul(w, &x).unwrap();
            assert_eq!(
                g.act_to_host(got).unwrap(),
                g.act_to_host(&want).unwrap(),
                "{tokens} tokens: matmul_each differs from matmul"
            );
        }
    }
    let narrow = load(&mut rng, GgmlType::Q8_0, 32);
    let x = g
        .act_from_host(&random(&mut rng, 2 * 128, 1.0), 2, 128)
        .unwrap();
    assert!(
        g.matmul_each(&[&narrow], &x).is_err(),
        "a 128-wide input against 256-wide weights"
    );
}
