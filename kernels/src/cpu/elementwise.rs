//! Element-wise ops in ggml-cpu's arithmetic: the unary functions
//! (`unary-ops.cpp`, `ggml_vec_silu_f32`), products with broadcast
//! (`ggml_mul`), scaling (`ggml_scale`) and column slices (views made
//! contiguous).

use rayon::prelude::*;

use super::ops::{gelu_tanh_f16, silu, silu_ggml, SERIAL_MAX_VALUES};
use super::{fused, CpuAct};
use crate::backend::Unary;

/// Applies `f` to every row of `x` (`cols` values each), on the pool when
/// the activation is large.
fn rows_mut(x: &mut CpuAct, f: impl Fn(&mut [f32]) + Send + Sync) {
    let cols = x.cols.max(1);
    if x.data.len() <= SERIAL_MAX_VALUES {
        x.data.chunks_mut(cols).for_each(f);
    } else {
        x.data.par_chunks_mut(cols).for_each(f);
    }
}

pub fn unary(x: &mut CpuAct, f: Unary) {
    rows_mut(x, |row| {
        fused(|| match f {
            Unary::Sigmoid => row.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp())),
            Unary::Softplus => row
                .iter_mut()
                .for_each(|v| *v = if *v > 20.0 { *v } else { (1.0 + v.exp()).ln() }),
            Unary::Tanh => row.iter_mut().for_each(|v| *v = v.tanh()),
            Unary::Silu => silu_row(row),
            Unary::Gelu => row.iter_mut().for_each(|v| *v = gelu_tanh_f16(*v)),
        })
    });
}

/// ggml_vec_silu_f32: whole 16-lane vectors (its polynomial `exp`), then
/// scalars (libm's). Compiled with FMA where the CPU has it: the
/// polynomial's `mul_add`s are otherwise a libm call each.
fn silu_row(row: &mut [f32]) {
    #[inline(always)]
    fn body(row: &mut [f32]) {
        let simd = row.len() & !15;
        let (vector, rest) = row.split_at_mut(simd);
        vector.iter_mut().for_each(|v| *v = silu_ggml(*v));
        rest.iter_mut().for_each(|v| *v = silu(*v));
    }
    #[cfg(target_arch = "x86_64")]
    if super::dot::fma_detected() {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn with_fma(row: &mut [f32]) {
            body(row)
        }
        // SAFETY: the features were detected.
        return unsafe { with_fma(row) };
    }
    body(row)
}

pub fn scale(x: &mut CpuAct, c: f32) {
    rows_mut(x, |row| row.iter_mut().for_each(|v| *v *= c));
}

/// `x *= y`, `y` either `x`'s shape or one value per row (checked by the caller).
pub fn mul(x: &mut CpuAct, y: &CpuAct) {
    let cols = x.cols.max(1);
    if y.cols == x.cols {
        x.data.iter_mut().zip(&y.data).for_each(|(a, b)| *a *= b);
    } else {
        x.data
            .chunks_mut(cols)
            .zip(&y.data)
            .for_each(|(row, b)| row.iter_mut().for_each(|a| *a *= b));
    }
}

/// `x[r][c] *= w[c mod w.len()]`.
pub fn mul_vector(x: &mut CpuAct, w: &[f32]) {
    rows_mut(x, |row| {
        row.chunks_mut(w.len())
            .for_each(|g| g.iter_mut().zip(w).for_each(|(a, b)| *a *= b))
    });
}

/// Columns `start .. start + len` (checked by the caller).
pub fn columns(x: &CpuAct, start: usize, len: usize) -> CpuAct {
    let mut data = Vec::with_capacity(x.rows * len);
    for r in 0..x.rows {
        data.extend_from_slice(&x.row(r)[start..start + len]);
    }
    CpuAct {
        data,
        rows: x.rows,
        cols: len,
    }
}
