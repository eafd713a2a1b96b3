//! The prompt matmul on tensor cores (gemm.cu, backend/gemm.rs): batches
//! longer than MAX_BATCH tokens, every quantized weight type, against the
//! CPU backend and the exact product (tolerances as cuda_ops.rs's matmul:
//! 3e-2 relative L2 vs the CPU, 2e-2 vs the exact product of the dequantized
//! weights, since both backends quantize activations to int8 their own way),
//! and against the decode kernels 8 tokens at a time, which quantize the
//! activations as the gemm does and do the same arithmetic per chunk: only
//! the f32 summation order differs, so that agreement is held to 1e-4.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use strata_kernels::cuda::MAX_BATCH;
use strata_kernels::{Backend, CpuBackend};
use strata_model::GgmlType;

mod common;
use common::*;

/// Relative L2 error of the gemm against the decode kernels (f32 summation
/// order only).
const VS_MATVEC: f64 = 1e-4;

/// (rows, cols in blocks of the type, token counts). Rows not a multiple of
/// the 64-row tile; one block of columns; 18 chunks for the 32-value types
/// (a last k step of 2 chunks of 4); 300 blocks; tokens just over
/// MAX_BATCH, one tile, one not a multiple of the 64-token tile, and 300.
fn shapes(dtype: GgmlType) -> Vec<(usize, usize, Vec<usize>)> {
    let block = dtype.block_elems();
    let mid = if block == 32 { 576 } else { 768 };
    let over = MAX_BATCH + 1;
    vec![
        (100, block, vec![over, 64, 77, 300]),
        (130, mid, vec![over, 64, 77, 300]),
        (40, 300 * block, vec![over, 70]),
    ]
}

#[test]
fn gemm_matches_cpu_and_the_decode_kernels_for_every_quant_type() {
    let (g, c) = (gpu(), CpuBackend::new());
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    let mut worst = Vec::new();
    for &dtype in QUANT_TYPES {
        for (rows, cols, token_counts) in shapes(dtype) {
            let w = random(&mut rng, rows * cols, 1.0);
            let (bytes, deq) = quantized(dtype, &w, cols);
            let dims = [cols as u64, rows as u64];
            let wg = g.load_weight("w", dtype, &dims, &bytes).unwrap();
            let wc = c.load_weight("w", dtype, &dims, &bytes).unwrap();
            for tokens in token_counts {
                let what = format!("{dtype} {rows}x{cols}, {tokens} tokens");
                let x = random(&mut rng, tokens * cols, 1.0);
                let got = g
                    .act_to_host(
                        &g.matmul(&wg, &g.act_from_host(&x, tokens, cols).unwrap())
                            .unwrap(),
                    )
                    .unwrap();
                let cpu = c
                    .act_to_host(
                        &c.matmul(&wc, &c.act_from_host(&x, tokens, cols).unwrap())
                            .unwrap(),
                    )
                    .unwrap();
                // The decode kernels, MAX_BATCH tokens a call.
                let matvec: Vec<f32> = x
                    .chunks(MAX_BATCH * cols)
                    .flat_map(|xs| {
                        let n = xs.len() / cols;
                        g.act_to_host(
                            &g.matmul(&wg, &g.act_from_host(xs, n, cols).unwrap())
                                .unwrap(),
                        )
                        .unwrap()
                    })
                    .collect();
                let exact = exact_product(&deq, &x, rows, cols, tokens);
                let (vs_cpu, vs_exact, vs_matvec) = (
                    rel_err(&got, &cpu),
                    rel_err(&got, &exact),
                    rel_err(&got, &matvec),
                );
                worst.push((what.clone(), vs_cpu, vs_exact, vs_matvec));
                assert!(
                    vs_matvec < VS_MATVEC,
                    "{what}: {vs_matvec:.2e} vs the decode kernels"
                );
                assert!(vs_exact < 2e-2, "{what}: {vs_exact:.2e} vs exact");
                assert!(vs_cpu < 3e-2, "{what}: {vs_cpu:.2e} vs CPU");
            }
        }
    }
    worst.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (what, vs_cpu, vs_exact, vs_matvec) in worst.iter().take(5) {
        println!("worst: {what}: {vs_cpu:.2e} vs CPU, {vs_exact:.2e} vs exact, {vs_matvec:.2e} vs matvec");
    }
}

/// out[t * rows + r] = deq[r] . x[t] in f64.
fn exact_product(deq: &[f32], x: &[f32], rows: usize, cols: usize, tokens: usize) -> Vec<f32> {
    (0..tokens)
        .flat_map(|t| {
            (0..rows).map(move |r| {
                (0..cols)
                    .map(|i| deq[r * cols + i] as f64 * x[t * cols + i] as f64)
                    .sum::<f64>() as f32
            })
        })
        .collect()
}
