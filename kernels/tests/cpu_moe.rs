//! The CPU backend's mixture-of-experts ops against their definition: each
//! expert's rows through the plain matmul, bit for bit, and the bias and
//! weighted sum against plain loops; bad ids and shapes are errors.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use strata_kernels::{Backend, CpuBackend};
use strata_model::GgmlType;

mod common;
use common::*;

const ROWS: usize = 24;
const COLS: usize = 256;

/// `matmul_id` gives the bits of the plain matmul of each expert's rows,
/// cut out as its own weight, over that expert's batch of inputs (one
/// token at a time for the repacked types: ggml's `gemv` per row).
#[test]
fn matmul_id_is_each_experts_own_matmul() {
    let cpu = CpuBackend::new();
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    for &dtype in WEIGHT_TYPES {
        let bytes = quantized(dtype, &random(&mut rng, N_EXPERT * ROWS * COLS, 1.0), COLS).0;
        let dims = [COLS as u64, ROWS as u64, N_EXPERT as u64];
        let experts = cpu.load_weight("exps", dtype, &dims, &bytes).unwrap();
        let per_expert = bytes.len() / N_EXPERT;
        for tokens in [1usize, 3, 8, 13] {
            let ids = expert_ids(&mut rng, tokens);
            let routing = cpu
                .routing(&ids, &vec![1.0; ids.len()], N_USED, N_EXPERT)
                .unwrap();
            for per_slot in [false, true] {
                let x_rows = if per_slot { ids.len() } else { tokens };
                let x = cpu
                    .act_from_host(&random(&mut rng, x_rows * COLS, 1.0), x_rows, COLS)
                    .unwrap();
                let got = cpu.matmul_id(&experts, &x, &routing).unwrap();
                assert_eq!((got.rows, got.cols), (ids.len(), ROWS));
                for e in 0..N_EXPERT {
                    let slots: Vec<usize> =
                        (0..ids.len()).filter(|&s| ids[s] as usize == e).collect();
                    if slots.is_empty() {
                        continue;
                    }
                    let own = cpu
                        .load_weight(
                            "own",
                            dtype,
                            &[COLS as u64, ROWS as u64],
                            &bytes[e * per_expert..(e + 1) * per_expert],
                        )
                        .unwrap();
                    let x_rows: Vec<usize> = slots
                        .iter()
                        .map(|&s| if per_slot { s } else { s / N_USED })
                        .collect();
                    // One row at a time where ggml's mul_mat_id takes
                    // another kernel than its mul_mat: the repacked types'
                    // gemv, and F32 (mul_mat hands 2+ rows to llamafile's
                    // sgemm, mul_mat_id never).
                    let one_row = matches!(dtype, GgmlType::Q4K | GgmlType::Q2K | GgmlType::F32);
                    let want: Vec<f32> = if one_row {
                        x_rows
                            .iter()
                            .flat_map(|&r| {
                                cpu.matmul(&own, &cpu.select_rows(&x, &[r]).unwrap())
                                    .unwrap()
                                    .data
                            })
                            .collect()
                    } else {
                        cpu.matmul(&own, &cpu.select_rows(&x, &x_rows).unwrap())
                            .unwrap()
                            .data
                    };
                    for (k, &s) in slots.iter().enumerate() {
                        let (g, w) = (got.row(s), &want[k * ROWS..(k + 1) * ROWS]);
                        assert!(
                            g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{dtype} batch {tokens} per_slot {per_slot} expert {e} slot {s}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn bad_ids_and_shapes_are_errors() {
    moe_ops_refuse_bad_input(&CpuBackend::new());
}

/// The dense ops' input checks (shared with the CUDA backend), here too
/// for want of a CPU dense-op test file.
#[test]
fn dense_ops_refuse_bad_input_on_the_cpu() {
    dense_ops_refuse_bad_input(&CpuBackend::new());
}

#[test]
fn add_bias_id_and_combine_match_loops() {
    let cpu = CpuBackend::new();
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    let (cols, tokens) = (40usize, 5usize);
    let bias = random(&mut rng, N_EXPERT * cols, 1.0);
    let bias_bytes: Vec<u8> = bias.iter().flat_map(|v| v.to_le_bytes()).collect();
    let bias_w = cpu
        .load_weight(
            "b",
            GgmlType::F32,
            &[cols as u64, N_EXPERT as u64],
            &bias_bytes,
        )
        .unwrap();
    let ids = expert_ids(&mut rng, tokens);
    let weights = random(&mut rng, ids.len(), 1.0);
    let routing = cpu.routing(&ids, &weights, N_USED, N_EXPERT).unwrap();
    let y0 = random(&mut rng, ids.len() * cols, 1.0);
    let mut y = cpu.act_from_host(&y0, ids.len(), cols).unwrap();
    cpu.add_bias_id(&mut y, &bias_w, &routing).unwrap();
    for s in 0..ids.len() {
        for c in 0..cols {
            let want = y0[s * cols + c] + bias[ids[s] as usize * cols + c];
            assert_eq!(y.data[s * cols + c].to_bits(), want.to_bits());
        }
    }
    let out = cpu.moe_combine(&y, &routing).unwrap();
    assert_eq!((out.rows, out.cols), (tokens, cols));
    for t in 0..tokens {
        for c in 0..cols {
            let mut want = y.data[(t * N_USED) * cols + c] * weights[t * N_USED];
            for j in 1..N_USED {
                let s = t * N_USED + j;
                let product = y.data[s * cols + c] * weights[s];
                want += product;
            }
            assert_eq!(out.data[t * cols + c].to_bits(), want.to_bits());
        }
    }
}
