//! The CUDA backend's matmul: matvec.cu's `mmvq_*` (int8-quantized
//! activations against quantized weights, as llama.cpp's MMVQ) and `mmv_*`
//! (float weights), MAX_BATCH tokens a launch.

use cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig, PushKernelArg};

use super::{
    fail, CudaAct, CudaBackend, CudaWeight, ACT_CHUNK_BYTES, MAX_BATCH, WARPS_PER_ROW_BLOCK,
};

impl CudaBackend {
    /// `out[t] = W x[t]` by the matrix-vector kernels.
    pub(super) fn matvec(&self, w: &CudaWeight, x: &CudaAct) -> CudaAct {
        assert_eq!(
            x.cols, w.cols,
            "matmul {}: activation width {} vs weight rows of {}",
            w.name, x.cols, w.cols
        );
        let mut out = self.output_f32(x.rows * w.rows);
        if Self::is_float(w.dtype) {
            self.matvec_groups(
                Self::typed(&self.matvec, w.dtype),
                w,
                &x.buf,
                x.cols,
                x.rows,
                &mut out,
            );
        } else {
            let chunks = w.cols / 32;
            // SAFETY: quantize_act writes every chunk before mmvq reads it.
            let mut xq = unsafe { self.stream.alloc::<u8>(x.rows * chunks * ACT_CHUNK_BYTES) }
                .unwrap_or_else(|e| fail("alloc", e));
            let (tokens, xcols) = (x.rows as i32, x.cols as i32);
            let mut b = self.stream.launch_builder(self.f("quantize_act"));
            b.arg(&x.buf).arg(&mut xq).arg(&tokens).arg(&xcols);
            // SAFETY: one thread per 32-value chunk of x into xq.
            self.launched("quantize_act", || {
                unsafe { b.launch(Self::grid_for(x.rows * chunks)) }.map(drop)
            });
            let per_token = chunks * ACT_CHUNK_BYTES;
            self.matvec_groups(
                Self::typed(&self.matvec, w.dtype),
                w,
                &xq,
                per_token,
                x.rows,
                &mut out,
            );
        }
        CudaAct {
            buf: out,
            rows: x.rows,
            cols: w.rows,
        }
    }

    /// Runs a row kernel (`mmv_*` / `mmvq_*`) over `tokens` inputs of
    /// `per_token` elements, MAX_BATCH tokens a launch.
    fn matvec_groups<T: cudarc::driver::DeviceRepr>(
        &self,
        (kernel_name, kernel): (&'static str, &CudaFunction),
        w: &CudaWeight,
        input: &CudaSlice<T>,
        per_token: usize,
        tokens: usize,
        out: &mut CudaSlice<f32>,
    ) {
        let (row_bytes, rows, cols) = (w.row_bytes, w.rows as i32, w.cols as i32);
        let cfg = LaunchConfig {
            grid_dim: ((w.rows as u32).div_ceil(WARPS_PER_ROW_BLOCK), 1, 1),
            block_dim: (32 * WARPS_PER_ROW_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        for first in (0..tokens).step_by(MAX_BATCH) {
            let n = (tokens - first).min(MAX_BATCH);
            let xs = input.slice(first * per_token..(first + n) * per_token);
            let mut os = out.slice_mut(first * w.rows..(first + n) * w.rows);
            let n_i = n as i32;
            let mut b = self.stream.launch_builder(kernel);
            b.arg(&w.data)
                .arg(&row_bytes)
                .arg(&rows)
                .arg(&cols)
                .arg(&xs)
                .arg(&n_i)
                .arg(&mut os);
            // SAFETY: n <= MAX_BATCH tokens in, n rows of w.rows outputs.
            self.launched(kernel_name, || unsafe { b.launch(cfg) }.map(drop));
        }
    }
}
