//! The CUDA backend's matmul: matvec.cu's `mmvq_*` (int8-quantized
//! activations against quantized weights, as llama.cpp's MMVQ) and `mmv_*`
//! (float weights), MAX_BATCH tokens a launch.
//!
//! A block of up to [`WARPS_PER_ROW_BLOCK`] warps computes
//! [`ROWS_PER_BLOCK`] output rows for every token of the launch, its threads
//! splitting the rows' columns (see matvec.cu).

use cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig, PushKernelArg};

use super::{
    device_error, CudaAct, CudaBackend, CudaWeight, ACT_CHUNK_BYTES, MAX_BATCH, WARPS_PER_ROW_BLOCK,
};
use crate::backend::{Backend, KernelError};

/// Output rows one matvec block computes (matvec.cu's ROWS_PER_BLOCK): each
/// activation chunk a thread loads serves this many rows.
const ROWS_PER_BLOCK: u32 = 2;

/// Bytes of a quantized activation chunk's 32 int8 levels; the rest of
/// [`ACT_CHUNK_BYTES`] is its f32 scale. A buffer of `n` chunks holds the
/// `n` level groups first (16-byte aligned, for 128-bit loads), then the `n`
/// scales.
pub(super) const ACT_LEVEL_BYTES: usize = 32;

/// The launch shape of a matvec kernel (`mmvq_*`, `mmv_*` and their `_id`
/// forms with `slots` grid rows) over weights of `rows` x `cols`.
pub(super) fn matvec_config(rows: usize, cols: usize, float: bool, slots: u32) -> LaunchConfig {
    // A thread takes one 32-weight chunk a step (quantized), or 8 elements
    // (float rows of a multiple of 8), else 1: as many warps as the row has
    // 32 such steps, so a narrow row leaves no warp idle.
    let per_step = match (float, cols.is_multiple_of(8)) {
        (false, _) => 32,
        (true, true) => 8,
        (true, false) => 1,
    };
    let warps = (cols.div_ceil(per_step).div_ceil(32) as u32).clamp(1, WARPS_PER_ROW_BLOCK);
    LaunchConfig {
        grid_dim: ((rows as u32).div_ceil(ROWS_PER_BLOCK).max(1), slots, 1),
        block_dim: (32 * warps, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A matvec kernel's input for every token of the matmul.
enum MatvecInput<'a> {
    /// f32 activations, `cols` a token.
    Float(&'a CudaSlice<f32>),
    /// Quantized activations (`quantize_act`'s levels then scales).
    Quant(&'a CudaSlice<u8>),
}

impl CudaBackend {
    /// `out[t] = W x[t]` by the matrix-vector kernels (`x.cols == w.cols`,
    /// checked by `matmul`).
    pub(super) fn matvec(&self, w: &CudaWeight, x: &CudaAct) -> Result<CudaAct, KernelError> {
        if Self::is_float(w.dtype) {
            self.matvec_of(w, MatvecInput::Float(&x.buf), x.rows)
        } else {
            self.matvec_of(w, MatvecInput::Quant(&self.quantize_act(x)?), x.rows)
        }
    }

    /// `W x[t]` for `tokens` inputs as the row kernels take them.
    fn matvec_of(
        &self,
        w: &CudaWeight,
        input: MatvecInput,
        tokens: usize,
    ) -> Result<CudaAct, KernelError> {
        let mut out = self.output(tokens * w.rows)?;
        let kernel = Self::typed(&self.matvec, w.dtype)?;
        self.matvec_groups(kernel, w, input, tokens, &mut out)?;
        Ok(CudaAct {
            buf: out,
            rows: tokens,
            cols: w.rows,
        })
    }

    /// `Backend::matmul_each` (shapes checked): a decode batch by several
    /// quantized weights quantizes `x` once (a `quantize_act` launch a
    /// weight was 18% of an 8B model's decode time on an H200); anything
    /// else goes weight by weight.
    pub(super) fn matvec_each(
        &self,
        ws: &[&CudaWeight],
        x: &CudaAct,
    ) -> Result<Vec<CudaAct>, KernelError> {
        let shared =
            ws.len() > 1 && x.rows <= MAX_BATCH && ws.iter().all(|w| !Self::is_float(w.dtype));
        if !shared {
            return ws.iter().map(|w| Backend::matmul(self, w, x)).collect();
        }
        let xq = self.quantize_act(x)?;
        ws.iter()
            .map(|w| self.matvec_of(w, MatvecInput::Quant(&xq), x.rows))
            .collect()
    }

    /// `x` quantized to int8 per 32 values (`quantize_act`): the levels of
    /// every chunk, then their scales.
    fn quantize_act(&self, x: &CudaAct) -> Result<CudaSlice<u8>, KernelError> {
        let n = x.rows * (x.cols / 32);
        // SAFETY: quantize_act writes every chunk before a matvec reads it.
        let mut xq = unsafe { self.stream.alloc::<u8>(n.max(1) * ACT_CHUNK_BYTES) }
            .map_err(|e| device_error("alloc", e))?;
        {
            let (mut levels, mut scales) = xq.split_at_mut(n * ACT_LEVEL_BYTES);
            let (tokens, cols) = (x.rows as i32, x.cols as i32);
            let mut b = self.stream.launch_builder(self.f("quantize_act")?);
            b.arg(&x.buf)
                .arg(&mut levels)
                .arg(&mut scales)
                .arg(&tokens)
                .arg(&cols);
            // SAFETY: one thread per 32-value chunk of x: 32 bytes of levels
            // and one f32 scale (that view starts at a multiple of 32 bytes).
            self.launched("quantize_act", || {
                unsafe { b.launch(Self::grid_for(n)) }.map(drop)
            })?;
        }
        Ok(xq)
    }

    /// Runs a row kernel (`mmv_*` / `mmvq_*`) over `tokens` inputs,
    /// MAX_BATCH tokens a launch.
    fn matvec_groups(
        &self,
        (kernel_name, kernel): (&'static str, &CudaFunction),
        w: &CudaWeight,
        input: MatvecInput,
        tokens: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), KernelError> {
        let (row_bytes, rows, cols) = (w.row_bytes, w.rows as i32, w.cols as i32);
        let float = matches!(input, MatvecInput::Float(_));
        let cfg = matvec_config(w.rows, w.cols, float, 1);
        let chunks = w.cols / 32;
        for first in (0..tokens).step_by(MAX_BATCH) {
            let n = (tokens - first).min(MAX_BATCH);
            let (xs, levels, scales);
            let mut os = out.slice_mut(first * w.rows..(first + n) * w.rows);
            let n_i = n as i32;
            let mut b = self.stream.launch_builder(kernel);
            b.arg(&w.data).arg(&row_bytes).arg(&rows).arg(&cols);
            match input {
                MatvecInput::Float(x) => {
                    xs = x.slice(first * w.cols..(first + n) * w.cols);
                    b.arg(&xs);
                }
                MatvecInput::Quant(xq) => {
                    let scales_at = tokens * chunks * ACT_LEVEL_BYTES;
                    levels = xq.slice(first * chunks * ACT_LEVEL_BYTES..scales_at);
                    scales = xq.slice(scales_at + first * chunks * 4..);
                    b.arg(&levels).arg(&scales);
                }
            }
            b.arg(&n_i).arg(&mut os);
            // SAFETY: n <= MAX_BATCH tokens in, n rows of w.rows outputs.
            self.launched(kernel_name, || unsafe { b.launch(cfg) }.map(drop))?;
        }
        Ok(())
    }
}
