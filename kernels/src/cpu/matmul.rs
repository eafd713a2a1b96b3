//! Quantized matmul: `out[t][r] = W[r] . x[t]`. Activations are quantized
//! once to the weight type's activation format; each weight row is dotted
//! in place, in tiles of rows so a tile stays in cache across all tokens.

use rayon::prelude::*;

use super::dot::{quantize_activation, vec_dot};
use super::{CpuAct, CpuWeight};

/// Weight rows per task: small enough to spread a decode matvec over the
/// pool, large enough to amortise scheduling.
const ROWS_PER_TASK: usize = 16;

/// A raw pointer that tasks write disjoint elements through.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes a disjoint set of (token, row) elements.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

pub fn matmul(w: &CpuWeight, x: &CpuAct) -> CpuAct {
    assert_eq!(x.cols, w.cols, "matmul {}: activation width {} vs weight rows of {}", w.name, x.cols, w.cols);
    let n_tok = x.rows;
    let mut xq_rows: Vec<Vec<u8>> = vec![Vec::new(); n_tok];
    xq_rows.par_iter_mut().enumerate().for_each(|(t, buf)| quantize_activation(w.dtype, x.row(t), buf));

    let mut out = vec![0f32; n_tok * w.rows];
    if n_tok == 1 {
        let xq = &xq_rows[0];
        out.par_chunks_mut(ROWS_PER_TASK).enumerate().for_each(|(c, chunk)| {
            for (i, o) in chunk.iter_mut().enumerate() {
                *o = vec_dot(w.dtype, w.cols, w.row_data(c * ROWS_PER_TASK + i), xq);
            }
        });
    } else {
        let ptr = OutPtr(out.as_mut_ptr());
        let n_rows = w.rows;
        (0..n_rows.div_ceil(ROWS_PER_TASK)).into_par_iter().for_each(move |c| {
            let ptr = ptr;
            let rows = c * ROWS_PER_TASK..((c + 1) * ROWS_PER_TASK).min(n_rows);
            for (t, xq) in xq_rows.iter().enumerate() {
                for r in rows.clone() {
                    let v = vec_dot(w.dtype, w.cols, w.row_data(r), xq);
                    // SAFETY: (t, r) is in bounds and written by this task only.
                    unsafe { *ptr.0.add(t * n_rows + r) = v };
                }
            }
        });
    }
    CpuAct { data: out, rows: n_tok, cols: w.rows }
}
