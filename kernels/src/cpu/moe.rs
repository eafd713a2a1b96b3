//! Mixture-of-experts ops on the CPU, as ggml-cpu computes them.
//!
//! `matmul_id` quantizes every activation row once, groups the batch's
//! (token, slot) pairs by expert as `ggml_compute_forward_mul_mat_id` does,
//! and runs each expert's rows through the plain matmul's core on that
//! expert's slice of the stacked weight (only the selected experts' rows
//! are read). The per-expert batch then picks ggml's kernel for that many
//! rows: `vec_dot` (or the tiled K-quant kernel from 8 rows); the repacked
//! types (Q4_K, Q2_K) take `gemv` row by row, as repack.cpp's
//! `forward_mul_mat_id` does.

use rayon::prelude::*;

use super::matmul::{dot_rows, with_quantized, GgmlOp, WeightRows};
use super::{CpuAct, CpuWeight};
use crate::backend::KernelError;
use crate::moe_route::{check_combine, check_ids, check_matmul_id};

pub fn matmul_id(
    experts: &CpuWeight,
    n_expert: usize,
    x: &CpuAct,
    ids: &[u32],
    n_used: usize,
) -> Result<CpuAct, KernelError> {
    let shape = check_matmul_id(
        &experts.name,
        experts.rows,
        experts.cols,
        n_expert,
        (x.rows, x.cols),
        ids,
        n_used,
    )?;
    let rows = shape.rows_per_expert;
    // Slots by expert, in slot order within each (ggml's row mapping).
    let mut by_expert: Vec<Vec<usize>> = vec![Vec::new(); n_expert];
    for (s, &e) in ids.iter().enumerate() {
        by_expert[e as usize].push(s);
    }
    let mut out = vec![0f32; ids.len() * rows];
    if rows == 0 {
        return Ok(CpuAct {
            data: out,
            rows: ids.len(),
            cols: rows,
        });
    }
    let all = WeightRows::of(experts);
    with_quantized(experts.dtype, x, |xq, xb| {
        // The experts run side by side (each also splits its rows): one
        // after another, a decode step waited on one small parallel
        // section per expert.
        let per_expert: Vec<(&[usize], Vec<f32>)> = by_expert
            .par_iter()
            .enumerate()
            .filter(|(_, slots)| !slots.is_empty())
            .map(|(e, slots)| {
                let xs: Vec<&[u8]> = slots
                    .iter()
                    .map(|&s| {
                        let r = shape.x_row(s, n_used);
                        &xq[r * xb..(r + 1) * xb]
                    })
                    .collect();
                let w = all.slice(e * rows..(e + 1) * rows);
                let mut part = vec![0f32; slots.len() * rows];
                let dst: Vec<usize> = (0..slots.len()).collect();
                dot_rows(w, &xs, &dst, GgmlOp::MulMatId, &mut part);
                (slots.as_slice(), part)
            })
            .collect();
        for (slots, part) in per_expert {
            for (&s, row) in slots.iter().zip(part.chunks_exact(rows)) {
                out[s * rows..(s + 1) * rows].copy_from_slice(row);
            }
        }
    });
    Ok(CpuAct {
        data: out,
        rows: ids.len(),
        cols: rows,
    })
}

/// ggml's `add_id`: row `r` of `x` += row `ids[r]` of `bias` (F32, as ggml requires).
pub fn add_bias_id(x: &mut CpuAct, bias: &CpuWeight, ids: &[u32]) -> Result<(), KernelError> {
    let bad = |what: String| KernelError::Invalid(format!("add_bias_id {}: {what}", bias.name));
    if bias.dtype != strata_model::GgmlType::F32 {
        return Err(bad(format!("bias of type {}, F32 needed", bias.dtype)));
    }
    if bias.cols != x.cols || ids.len() != x.rows {
        return Err(bad(format!(
            "{} ids and bias rows of {} for {}x{} activations",
            ids.len(),
            bias.cols,
            x.rows,
            x.cols
        )));
    }
    check_ids(&bias.name, ids, bias.rows)?;
    if x.cols == 0 {
        return Ok(());
    }
    for (row, &e) in x.data.chunks_exact_mut(x.cols).zip(ids) {
        let b = bias.row_data(e as usize);
        for (v, b) in row.iter_mut().zip(b.chunks_exact(4)) {
            *v += f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    }
    Ok(())
}

/// Each token's expert outputs weighted and summed as llama.cpp's graph
/// does: `ggml_mul` by the weight (rounded to f32), then `ggml_add` from
/// the first slot on.
pub fn moe_combine(y: &CpuAct, weights: &[f32], n_used: usize) -> Result<CpuAct, KernelError> {
    let n_tokens = check_combine(y.rows, weights.len(), n_used)?;
    let cols = y.cols;
    let mut out = vec![0f32; n_tokens * cols];
    if cols == 0 {
        return Ok(CpuAct {
            data: out,
            rows: n_tokens,
            cols,
        });
    }
    for (t, o) in out.chunks_exact_mut(cols).enumerate() {
        for j in 0..n_used {
            let s = t * n_used + j;
            let (row, w) = (y.row(s), weights[s]);
            if j == 0 {
                o.iter_mut().zip(row).for_each(|(o, &v)| *o = v * w);
            } else {
                o.iter_mut().zip(row).for_each(|(o, &v)| *o += v * w);
            }
        }
    }
    Ok(CpuAct {
        data: out,
        rows: n_tokens,
        cols,
    })
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use strata_model::quant::quantize_row;
    use strata_model::GgmlType;

    use crate::{Backend, CpuBackend};

    const N_EXPERT: usize = 8;
    const N_USED: usize = 2;
    const ROWS: usize = 24;
    const COLS: usize = 256;

    fn seed() -> u64 {
        let s = rand::rng().random();
        println!("seed {s}");
        s
    }

    fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    fn quantized(dtype: GgmlType, values: &[f32]) -> Vec<u8> {
        let rb = dtype.row_bytes(COLS as u64).unwrap() as usize;
        let mut bytes = vec![0u8; rb * values.len() / COLS];
        for (src, dst) in values.chunks(COLS).zip(bytes.chunks_mut(rb)) {
            quantize_row(dtype, src, dst).unwrap();
        }
        bytes
    }

    /// Two distinct experts per token; expert 0 is the first pick of the
    /// first ten tokens, so a batch of 13 gives it ggml's tiled-kernel batch.
    fn pick(rng: &mut ChaCha8Rng, tokens: usize) -> Vec<u32> {
        (0..tokens)
            .flat_map(|t| {
                let a = if t < 10 {
                    0
                } else {
                    rng.random_range(0..N_EXPERT as u32)
                };
                let b = (a + rng.random_range(1..N_EXPERT as u32)) % N_EXPERT as u32;
                [a, b]
            })
            .collect()
    }

    /// `matmul_id` gives the bits of the plain matmul of each expert's rows,
    /// cut out as its own weight, over that expert's batch of inputs (one
    /// token at a time for the repacked types: ggml's `gemv` per row).
    #[test]
    fn matmul_id_is_each_experts_own_matmul() {
        let cpu = CpuBackend::new();
        let mut rng = ChaCha8Rng::seed_from_u64(seed());
        for dtype in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Q2K,
            GgmlType::Q3K,
            GgmlType::Q4K,
            GgmlType::Q5K,
            GgmlType::Q6K,
            GgmlType::MXFP4,
        ] {
            let bytes = quantized(dtype, &random(&mut rng, N_EXPERT * ROWS * COLS));
            let dims = [COLS as u64, ROWS as u64, N_EXPERT as u64];
            let experts = cpu.load_weight("exps", dtype, &dims, &bytes).unwrap();
            let per_expert = bytes.len() / N_EXPERT;
            for tokens in [1usize, 3, 8, 13] {
                let ids = pick(&mut rng, tokens);
                for per_slot in [false, true] {
                    let x_rows = if per_slot { ids.len() } else { tokens };
                    let x = cpu.act_from_host(&random(&mut rng, x_rows * COLS), x_rows, COLS);
                    let got = cpu.matmul_id(&experts, N_EXPERT, &x, &ids, N_USED).unwrap();
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
                        let want: Vec<f32> = if matches!(dtype, GgmlType::Q4K | GgmlType::Q2K) {
                            x_rows
                                .iter()
                                .flat_map(|&r| cpu.matmul(&own, &cpu.select_rows(&x, &[r])).data)
                                .collect()
                        } else {
                            cpu.matmul(&own, &cpu.select_rows(&x, &x_rows)).data
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
        let cpu = CpuBackend::new();
        let bytes = quantized(GgmlType::Q8_0, &vec![0.5; N_EXPERT * ROWS * COLS]);
        let dims = [COLS as u64, ROWS as u64, N_EXPERT as u64];
        let experts = cpu
            .load_weight("exps", GgmlType::Q8_0, &dims, &bytes)
            .unwrap();
        let x = cpu.act_from_host(&vec![1.0; 2 * COLS], 2, COLS);
        assert!(cpu
            .matmul_id(&experts, N_EXPERT, &x, &[0, 8, 1, 2], N_USED)
            .is_err());
        assert!(cpu
            .matmul_id(&experts, N_EXPERT, &x, &[0, 1, 2], N_USED)
            .is_err());
        assert!(cpu
            .matmul_id(&experts, 5, &x, &[0, 1, 2, 3], N_USED)
            .is_err());
        assert!(cpu
            .matmul_id(&experts, N_EXPERT, &x, &[0, 1, 2, 3, 4, 5], N_USED)
            .is_err());
        assert!(cpu
            .matmul_id(&experts, N_EXPERT, &x, &[0, 1, 2, 7], N_USED)
            .is_ok());
        let bias = [0f32; N_EXPERT * 4];
        let bias_bytes: Vec<u8> = bias.iter().flat_map(|v| v.to_le_bytes()).collect();
        let bias = cpu
            .load_weight("b", GgmlType::F32, &[4, N_EXPERT as u64], &bias_bytes)
            .unwrap();
        let mut y = cpu.act_from_host(&[0.0; 8], 2, 4);
        assert!(cpu.add_bias_id(&mut y, &bias, &[3, 8]).is_err());
        assert!(cpu.add_bias_id(&mut y, &bias, &[3]).is_err());
        assert!(cpu.add_bias_id(&mut y, &bias, &[3, 7]).is_ok());
        assert!(cpu.moe_combine(&y, &[1.0], N_USED).is_err());
        assert!(cpu.moe_combine(&y, &[1.0, 1.0], 0).is_err());
    }

    #[test]
    fn add_bias_id_and_combine_match_loops() {
        let cpu = CpuBackend::new();
        let mut rng = ChaCha8Rng::seed_from_u64(seed());
        let (cols, tokens) = (40usize, 5usize);
        let bias = random(&mut rng, N_EXPERT * cols);
        let bias_bytes: Vec<u8> = bias.iter().flat_map(|v| v.to_le_bytes()).collect();
        let bias_w = cpu
            .load_weight(
                "b",
                GgmlType::F32,
                &[cols as u64, N_EXPERT as u64],
                &bias_bytes,
            )
            .unwrap();
        let ids = pick(&mut rng, tokens);
        let y0 = random(&mut rng, ids.len() * cols);
        let mut y = cpu.act_from_host(&y0, ids.len(), cols);
        cpu.add_bias_id(&mut y, &bias_w, &ids).unwrap();
        for s in 0..ids.len() {
            for c in 0..cols {
                let want = y0[s * cols + c] + bias[ids[s] as usize * cols + c];
                assert_eq!(y.data[s * cols + c].to_bits(), want.to_bits());
            }
        }
        let weights = random(&mut rng, ids.len());
        let out = cpu.moe_combine(&y, &weights, N_USED).unwrap();
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
}
