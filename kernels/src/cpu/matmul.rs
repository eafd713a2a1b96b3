//! Quantized matmul: `out[t][r] = W[r] . x[t]`. Activations are quantized
//! once to the weight type's activation format into one reused buffer; each
//! weight row is dotted in place.
//!
//! Decode (one token) splits the rows into a few chunks per thread: a
//! transformer step makes hundreds of these calls, so scheduling overhead
//! counts. Prompts (several tokens) take tiles of rows, and within a tile
//! dot each row with [`TOKENS`] activation rows at once (`vec_dot_x4`: the
//! weight block is loaded and unpacked once for all of them, and the
//! result bits are those of `vec_dot`).

use std::cell::RefCell;

use rayon::prelude::*;

use super::dot::{
    activation_row_bytes, quantize_activation_into, RowDot, TILED_MIN_TOKENS, TOKENS,
};
use super::{CpuAct, CpuWeight};

/// Weight rows per task for prompts: the tile stays in L1 while the
/// activation rows stream past it.
const PROMPT_ROWS_PER_TASK: usize = 16;

/// Decode: at least this many rows per task, and about this many tasks per thread.
const DECODE_MIN_ROWS: usize = 16;
const DECODE_TASKS_PER_THREAD: usize = 4;

/// A raw pointer that tasks write disjoint elements through.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes a disjoint set of (token, row) elements.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

thread_local! {
    /// The quantized activations of the calling thread's last matmul, reused.
    static XQ: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

pub fn matmul(w: &CpuWeight, x: &CpuAct) -> CpuAct {
    assert_eq!(
        x.cols, w.cols,
        "matmul {}: activation width {} vs weight rows of {}",
        w.name, x.cols, w.cols
    );
    // Taken out rather than borrowed: while this thread waits inside the
    // parallel section, rayon may run another matmul on it.
    let mut buf = XQ.with(|b| std::mem::take(&mut *b.borrow_mut()));
    let out = matmul_with(w, x, &mut buf);
    XQ.with(|b| *b.borrow_mut() = buf);
    out
}

fn matmul_with(w: &CpuWeight, x: &CpuAct, xq: &mut Vec<u8>) -> CpuAct {
    let n_tok = x.rows;
    let xb = activation_row_bytes(w.dtype, w.cols);
    xq.resize(n_tok * xb, 0);
    if n_tok == 1 {
        quantize_activation_into(w.dtype, x.row(0), &mut xq[..xb]);
    } else {
        xq.par_chunks_mut(xb)
            .enumerate()
            .for_each(|(t, b)| quantize_activation_into(w.dtype, x.row(t), b));
    }
    let xq: &[u8] = xq;
    let xrow = |t: usize| &xq[t * xb..(t + 1) * xb];

    let kernel = RowDot::new(w.dtype, w.cols);
    let mut out = vec![0f32; n_tok * w.rows];
    if n_tok == 1 {
        let tasks = rayon::current_num_threads() * DECODE_TASKS_PER_THREAD;
        let chunk = w.rows.div_ceil(tasks).max(DECODE_MIN_ROWS);
        let x0 = xrow(0);
        out.par_chunks_mut(chunk).enumerate().for_each(|(c, part)| {
            for (i, o) in part.iter_mut().enumerate() {
                *o = kernel.dot(w.row_data(c * chunk + i), x0);
            }
        });
    } else {
        let ptr = OutPtr(out.as_mut_ptr());
        let n_rows = w.rows;
        let tiled = kernel.tiled().filter(|_| n_tok >= TILED_MIN_TOKENS);
        let grouped = if tiled.is_some() {
            // Every token: the last group repeats its last token.
            n_tok.div_ceil(TOKENS) * TOKENS
        } else if kernel.has_x4() {
            n_tok / TOKENS * TOKENS
        } else {
            0
        };
        (0..n_rows.div_ceil(PROMPT_ROWS_PER_TASK))
            .into_par_iter()
            .for_each(move |c| {
                let ptr = ptr;
                let rows = c * PROMPT_ROWS_PER_TASK..((c + 1) * PROMPT_ROWS_PER_TASK).min(n_rows);
                // SAFETY (of the writes): (t, r) is in bounds and written by this task only.
                let put = |t: usize, r: usize, v: f32| unsafe { *ptr.0.add(t * n_rows + r) = v };
                for t0 in (0..grouped).step_by(TOKENS) {
                    let xs: [&[u8]; TOKENS] =
                        std::array::from_fn(|k| xrow((t0 + k).min(n_tok - 1)));
                    for r in rows.clone() {
                        let v = match tiled {
                            Some(tiled) => tiled.dot_x4(w.row_data(r), xs),
                            None => kernel.dot_x4(w.row_data(r), xs),
                        };
                        v.iter()
                            .enumerate()
                            .take(n_tok - t0)
                            .for_each(|(k, &v)| put(t0 + k, r, v));
                    }
                }
                for t in grouped..n_tok {
                    for r in rows.clone() {
                        put(t, r, kernel.dot(w.row_data(r), xrow(t)));
                    }
                }
            });
    }
    CpuAct {
        data: out,
        rows: n_tok,
        cols: w.rows,
    }
}
