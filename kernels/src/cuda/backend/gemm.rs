//! The CUDA backend's prompt matmul: gemm.cu's `gemm_*` tiles on tensor
//! cores (int8 `mma.sync`, compute capability 8.0 and up, and the emulator)
//! for batches longer than the decode kernels' [`MAX_BATCH`], where the
//! matrix-vector kernels would re-read the weights for every 8 tokens.

use cudarc::driver::{LaunchConfig, PushKernelArg};
use strata_model::GgmlType;

use super::{device_error, CudaAct, CudaBackend, CudaWeight, MAX_BATCH};
use crate::backend::KernelError;
use crate::cuda::emulator;

/// gemm.cu's tile: weight rows x tokens per block, and its threads.
const GEMM_ROWS: usize = 64;
const GEMM_TOKENS: usize = 64;
const GEMM_THREADS: u32 = 128;
/// Bytes per 32-value activation chunk: 32 int8 levels, and 4 f32 (the
/// scale and the scaled sums of each half).
const LEVEL_BYTES: usize = 32;
const SCALE_FLOATS: usize = 4;
/// The most blocks a grid's y dimension takes (token tiles).
const MAX_GRID_Y: usize = 65535;

impl CudaBackend {
    /// `out[t] = W x[t]` on tensor cores, or `Ok(None)` where that path does not
    /// apply: a decode-sized batch, float weights (the matvec path keeps
    /// them), or a GPU older than sm_80 (no int8 m16n8k16 `mma.sync`).
    pub(super) fn gemm(&self, w: &CudaWeight, x: &CudaAct) -> Result<Option<CudaAct>, KernelError> {
        let tokens = x.rows;
        if tokens <= MAX_BATCH || x.cols != w.cols || tokens.div_ceil(GEMM_TOKENS) > MAX_GRID_Y {
            return Ok(None);
        }
        let Some(kernel) = Self::gemm_kernel(w.dtype) else {
            return Ok(None);
        };
        let cc = self.compute_capability;
        if !emulator::is_emulated(cc) && cc < (8, 0) {
            return Ok(None);
        }
        let chunks = w.cols / 32;
        // SAFETY: gemm_quantize_act writes every chunk before the gemm reads it.
        let mut xq = unsafe { self.stream.alloc::<i32>(tokens * chunks * LEVEL_BYTES / 4) }
            .map_err(|e| device_error("alloc", e))?;
        // SAFETY: as above.
        let mut xs = unsafe { self.stream.alloc::<f32>(tokens * chunks * SCALE_FLOATS) }
            .map_err(|e| device_error("alloc", e))?;
        let (tokens_i, cols) = (tokens as i32, x.cols as i32);
        let mut b = self.stream.launch_builder(self.f("gemm_quantize_act")?);
        b.arg(&x.buf)
            .arg(&mut xq)
            .arg(&mut xs)
            .arg(&tokens_i)
            .arg(&cols);
        // SAFETY: one thread per 32-value chunk of x into xq and xs.
        self.launched("gemm_quantize_act", || {
            unsafe { b.launch(Self::grid_for(tokens * chunks)) }.map(drop)
        })?;

        let mut out = self.output(tokens * w.rows)?;
        let (row_bytes, rows) = (w.row_bytes, w.rows as i32);
        let cfg = LaunchConfig {
            grid_dim: (
                w.rows.div_ceil(GEMM_ROWS) as u32,
                tokens.div_ceil(GEMM_TOKENS) as u32,
                1,
            ),
            block_dim: (GEMM_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(self.f(kernel)?);
        b.arg(&w.data)
            .arg(&row_bytes)
            .arg(&rows)
            .arg(&cols)
            .arg(&xq)
            .arg(&xs)
            .arg(&tokens_i)
            .arg(&mut out);
        // SAFETY: blocks cover rows x tokens; each writes only the outputs
        // of its tile below those bounds, and reads w.rows rows of w and
        // `tokens` rows of xq / xs.
        self.launched(kernel, || unsafe { b.launch(cfg) }.map(drop))?;
        Ok(Some(CudaAct {
            buf: out,
            rows: tokens,
            cols: w.rows,
        }))
    }

    /// The gemm kernel of a quantized weight type (none for float types).
    fn gemm_kernel(dtype: GgmlType) -> Option<&'static str> {
        Some(match dtype {
            GgmlType::Q4_0 => "gemm_q4_0",
            GgmlType::Q4_1 => "gemm_q4_1",
            GgmlType::Q5_0 => "gemm_q5_0",
            GgmlType::Q5_1 => "gemm_q5_1",
            GgmlType::Q8_0 => "gemm_q8_0",
            GgmlType::Q2K => "gemm_q2_k",
            GgmlType::Q3K => "gemm_q3_k",
            GgmlType::Q4K => "gemm_q4_k",
            GgmlType::Q5K => "gemm_q5_k",
            GgmlType::Q6K => "gemm_q6_k",
            GgmlType::Q8K => "gemm_q8_k",
            GgmlType::MXFP4 => "gemm_mxfp4",
            _ => return None,
        })
    }
}
