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
//!
//! The core ([`dot_rows`]) multiplies a borrowed row range of a weight
//! ([`WeightRows`]) by any list of quantized activation rows and scatters
//! the results to any output rows: `matmul` is one call of it over the
//! whole weight, `matmul_id` (`moe.rs`) one per expert.

use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;
use strata_model::GgmlType;

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

/// Which of ggml's ops a batch is multiplied as: the kernel (and so the
/// rounding) a batch shape gets differs between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GgmlOp {
    /// `mul_mat`: the repacked types (Q4_K, Q2_K) take `gemm` in groups of
    /// four tokens, the other K-quants the tiled kernel from 8 tokens.
    MulMat,
    /// `mul_mat_id`, per expert: the repacked types take `gemv` one token
    /// at a time whatever the batch (repack.cpp's `forward_mul_mat_id`);
    /// the tiled kernel from 8 of the expert's rows, as `mul_mat`.
    MulMatId,
}

/// The rows of a weight a matmul reads, borrowed: a whole weight, or one
/// expert's slice of a stacked one.
#[derive(Debug, Clone, Copy)]
pub(super) struct WeightRows<'a> {
    pub dtype: GgmlType,
    pub rows: usize,
    pub cols: usize,
    row_bytes: usize,
    bytes: &'a [u8],
}

impl<'a> WeightRows<'a> {
    pub fn of(w: &'a CpuWeight) -> Self {
        WeightRows {
            dtype: w.dtype,
            rows: w.rows,
            cols: w.cols,
            row_bytes: w.row_bytes,
            bytes: &w.bytes[..w.rows * w.row_bytes],
        }
    }

    /// Rows `range` of these rows.
    ///
    /// # Panics
    /// When the range is out of bounds.
    pub fn slice(self, range: Range<usize>) -> Self {
        assert!(
            range.start <= range.end && range.end <= self.rows,
            "weight rows {range:?} of {}",
            self.rows
        );
        WeightRows {
            rows: range.len(),
            bytes: &self.bytes[range.start * self.row_bytes..range.end * self.row_bytes],
            ..self
        }
    }

    fn row(&self, r: usize) -> &'a [u8] {
        &self.bytes[r * self.row_bytes..(r + 1) * self.row_bytes]
    }
}

pub fn matmul(w: &CpuWeight, x: &CpuAct) -> CpuAct {
    assert_eq!(
        x.cols, w.cols,
        "matmul {}: activation width {} vs weight rows of {}",
        w.name, x.cols, w.cols
    );
    let mut out = vec![0f32; x.rows * w.rows];
    with_quantized(w.dtype, x, |xq, xb| {
        let xs: Vec<&[u8]> = xq.chunks_exact(xb.max(1)).take(x.rows).collect();
        let dst: Vec<usize> = (0..x.rows).collect();
        dot_rows(WeightRows::of(w), &xs, &dst, GgmlOp::MulMat, &mut out);
    });
    CpuAct {
        data: out,
        rows: x.rows,
        cols: w.rows,
    }
}

/// Runs `f` on `x`'s rows quantized for `dtype` weights (all rows, one
/// buffer of `xb`-byte rows) in the calling thread's reused buffer.
pub(super) fn with_quantized<R>(
    dtype: GgmlType,
    x: &CpuAct,
    f: impl FnOnce(&[u8], usize) -> R,
) -> R {
    // Taken out rather than borrowed: while this thread waits inside the
    // parallel section, rayon may run another matmul on it.
    let mut xq = XQ.with(|b| std::mem::take(&mut *b.borrow_mut()));
    let xb = activation_row_bytes(dtype, x.cols);
    xq.resize(x.rows * xb, 0);
    if x.rows == 1 {
        quantize_activation_into(dtype, x.row(0), &mut xq[..xb]);
    } else if xb > 0 {
        xq.par_chunks_mut(xb)
            .enumerate()
            .for_each(|(t, b)| quantize_activation_into(dtype, x.row(t), b));
    }
    let r = f(&xq, xb);
    XQ.with(|b| *b.borrow_mut() = xq);
    r
}

/// `out[dst[i] * w.rows + r] = W[r] . xs[i]` for every row `r` of `w` and
/// every quantized activation row `xs[i]`, with the kernels ggml's `op`
/// takes for `xs.len()` rows.
///
/// # Panics
/// When `dst` and `xs` differ in length or an output row is outside `out`.
pub(super) fn dot_rows(
    w: WeightRows<'_>,
    xs: &[&[u8]],
    dst: &[usize],
    op: GgmlOp,
    out: &mut [f32],
) {
    let n_tok = xs.len();
    let n_rows = w.rows;
    assert_eq!(dst.len(), n_tok, "dot_rows: one output row per input row");
    assert!(
        dst.iter().all(|&d| (d + 1) * n_rows <= out.len()),
        "dot_rows: output row outside {} values",
        out.len()
    );
    if n_tok == 0 || n_rows == 0 {
        return;
    }
    let kernel = match op {
        GgmlOp::MulMat => RowDot::new(w.dtype, w.cols).for_mul_mat(n_tok),
        GgmlOp::MulMatId => RowDot::new(w.dtype, w.cols),
    };
    if n_tok == 1 {
        let tasks = rayon::current_num_threads() * DECODE_TASKS_PER_THREAD;
        let chunk = n_rows.div_ceil(tasks).max(DECODE_MIN_ROWS);
        let x0 = xs[0];
        let out = &mut out[dst[0] * n_rows..(dst[0] + 1) * n_rows];
        out.par_chunks_mut(chunk).enumerate().for_each(|(c, part)| {
            for (i, o) in part.iter_mut().enumerate() {
                *o = kernel.dot(w.row(c * chunk + i), x0);
            }
        });
        return;
    }
    let ptr = OutPtr(out.as_mut_ptr());
    let tiled = kernel.tiled().filter(|_| n_tok >= TILED_MIN_TOKENS);
    let grouped = if tiled.is_some() {
        // Every token: the last group repeats its last token.
        n_tok.div_ceil(TOKENS) * TOKENS
    } else if kernel.has_x4() && !(op == GgmlOp::MulMatId && x4_is_gemm(w.dtype)) {
        n_tok / TOKENS * TOKENS
    } else {
        0
    };
    (0..n_rows.div_ceil(PROMPT_ROWS_PER_TASK))
        .into_par_iter()
        .for_each(move |c| {
            let ptr = ptr;
            let rows = c * PROMPT_ROWS_PER_TASK..((c + 1) * PROMPT_ROWS_PER_TASK).min(n_rows);
            // SAFETY (of the writes): (dst[t], r) is in bounds (checked
            // above) and r is this task's only: tasks split the weight rows.
            let put = |t: usize, r: usize, v: f32| unsafe { *ptr.0.add(dst[t] * n_rows + r) = v };
            for t0 in (0..grouped).step_by(TOKENS) {
                let four: [&[u8]; TOKENS] = std::array::from_fn(|k| xs[(t0 + k).min(n_tok - 1)]);
                for r in rows.clone() {
                    let v = match tiled {
                        Some(tiled) => tiled.dot_x4(w.row(r), four),
                        None => kernel.dot_x4(w.row(r), four),
                    };
                    v.iter()
                        .enumerate()
                        .take(n_tok - t0)
                        .for_each(|(k, &v)| put(t0 + k, r, v));
                }
            }
            for (t, &x) in xs.iter().enumerate().skip(grouped) {
                for r in rows.clone() {
                    put(t, r, kernel.dot(w.row(r), x));
                }
            }
        });
}

/// The types whose four-token kernel follows ggml's repacked `gemm`
/// (other bits than the one-token `gemv` order of their `dot`); every
/// other type's `dot_x4` gives `dot`'s bits (see dot/avx2.rs).
fn x4_is_gemm(dtype: GgmlType) -> bool {
    matches!(dtype, GgmlType::Q4K | GgmlType::Q2K)
}
