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
use crate::moe_route::{check_combine, check_ids, check_matmul_id, HostRouting};

pub fn matmul_id(experts: &CpuWeight, x: &CpuAct, r: &HostRouting) -> Result<CpuAct, KernelError> {
    let (ids, n_used, n_expert) = (&r.ids, r.n_used, r.n_expert);
    let shape = check_matmul_id(
        &experts.name,
        experts.rows,
        experts.cols,
        n_expert,
        (x.rows, x.cols),
        ids.len(),
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
pub fn add_bias_id(x: &mut CpuAct, bias: &CpuWeight, r: &HostRouting) -> Result<(), KernelError> {
    let ids = &r.ids;
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
pub fn moe_combine(y: &CpuAct, r: &HostRouting) -> Result<CpuAct, KernelError> {
    let (weights, n_used) = (&r.weights, r.n_used);
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
