//! The CUDA backend's element-wise ops besides gating and adds
//! (elementwise.cu): RMSNorm with or without a weight, the unary functions,
//! scaling, products with broadcast and column slices. Shapes are checked
//! by `op_checks` before any launch, as on the CPU.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::{CudaAct, CudaBackend, CudaWeight};
use crate::backend::{KernelError, Unary};
use crate::op_checks;

impl CudaBackend {
    /// RMSNorm over groups of `group` values of `x`, times `w` when given.
    pub(super) fn norm_groups(
        &self,
        x: &CudaAct,
        group: usize,
        eps: f32,
        w: Option<&CudaSlice<f32>>,
    ) -> Result<CudaAct, KernelError> {
        let groups = x.rows * x.cols / group;
        let mut out = self.output(x.rows * x.cols)?;
        if groups == 0 {
            return Ok(CudaAct {
                buf: out,
                rows: x.rows,
                cols: x.cols,
            });
        }
        let n = group as i32;
        let threads = (group.next_power_of_two() as u32).clamp(32, 1024);
        let cfg = LaunchConfig {
            grid_dim: (groups as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let null: u64 = 0;
        let mut b = self.stream.launch_builder(self.f("rms_norm")?);
        b.arg(&x.buf);
        match w {
            Some(w) => b.arg(w),
            None => b.arg(&null),
        };
        b.arg(&mut out).arg(&n).arg(&eps);
        // SAFETY: `groups` groups of `group` values in both buffers; a
        // weight has `group` values.
        self.launched("rms_norm", || unsafe { b.launch(cfg) }.map(drop))?;
        Ok(CudaAct {
            buf: out,
            rows: x.rows,
            cols: x.cols,
        })
    }

    pub(super) fn rms_norm_weighted(
        &self,
        x: &CudaAct,
        w: &CudaWeight,
        eps: f32,
    ) -> Result<CudaAct, KernelError> {
        let wv = Self::vector("rms_norm", w, x.cols, false)?;
        self.norm_groups(x, w.cols, eps, Some(wv))
    }

    pub(super) fn rms_norm_groups(
        &self,
        x: &CudaAct,
        group: usize,
        eps: f32,
    ) -> Result<CudaAct, KernelError> {
        op_checks::groups("rms_norm_plain", x.cols, group)?;
        self.norm_groups(x, group, eps, None)
    }

    pub(super) fn unary_in_place(&self, x: &mut CudaAct, f: Unary) -> Result<(), KernelError> {
        let n = x.rows * x.cols;
        if n == 0 {
            return Ok(());
        }
        // elementwise.cu's `unary` numbers the functions in this order.
        let code: i32 = match f {
            Unary::Sigmoid => 0,
            Unary::Softplus => 1,
            Unary::Silu => 2,
            Unary::Tanh => 3,
            Unary::Gelu => 4,
        };
        let mut b = self.stream.launch_builder(self.f("unary")?);
        b.arg(&mut x.buf).arg(&n).arg(&code);
        // SAFETY: n values of x.
        self.launched("unary", || unsafe { b.launch(Self::grid_for(n)) }.map(drop))
    }

    pub(super) fn scale_in_place(&self, x: &mut CudaAct, c: f32) -> Result<(), KernelError> {
        let n = x.rows * x.cols;
        if n == 0 {
            return Ok(());
        }
        let mut b = self.stream.launch_builder(self.f("scale")?);
        b.arg(&mut x.buf).arg(&n).arg(&c);
        // SAFETY: n values of x.
        self.launched("scale", || unsafe { b.launch(Self::grid_for(n)) }.map(drop))
    }

    /// `x[i] *= y[(i / div) % len]` (elementwise.cu's `mul_broadcast`).
    fn mul_broadcast(
        &self,
        x: &mut CudaAct,
        y: &CudaSlice<f32>,
        div: usize,
        len: usize,
    ) -> Result<(), KernelError> {
        let n = x.rows * x.cols;
        if n == 0 {
            return Ok(());
        }
        let mut b = self.stream.launch_builder(self.f("mul_broadcast")?);
        b.arg(&mut x.buf).arg(y).arg(&n).arg(&div).arg(&len);
        // SAFETY: n values of x; (i / div) % len < len values of y.
        self.launched("mul_broadcast", || {
            unsafe { b.launch(Self::grid_for(n)) }.map(drop)
        })
    }

    pub(super) fn mul_act(&self, x: &mut CudaAct, y: &CudaAct) -> Result<(), KernelError> {
        op_checks::mul((x.rows, x.cols), (y.rows, y.cols))?;
        if y.cols == x.cols {
            let n = x.rows * x.cols;
            self.mul_broadcast(x, &y.buf, 1, n.max(1))
        } else {
            let (div, len) = (x.cols.max(1), y.rows.max(1));
            self.mul_broadcast(x, &y.buf, div, len)
        }
    }

    pub(super) fn mul_vector(&self, x: &mut CudaAct, w: &CudaWeight) -> Result<(), KernelError> {
        let wv = Self::vector("mul_weight", w, x.cols, false)?;
        self.mul_broadcast(x, wv, 1, w.cols)
    }

    pub(super) fn column_slice(
        &self,
        x: &CudaAct,
        start: usize,
        len: usize,
    ) -> Result<CudaAct, KernelError> {
        op_checks::columns(x.cols, start, len)?;
        let n = x.rows * len;
        let mut out = self.output(n)?;
        if n > 0 {
            let (cols, start_i, len_i) = (x.cols as i32, start as i32, len as i32);
            let mut b = self.stream.launch_builder(self.f("columns")?);
            b.arg(&x.buf)
                .arg(&mut out)
                .arg(&n)
                .arg(&cols)
                .arg(&start_i)
                .arg(&len_i);
            // SAFETY: n values of out; start + len <= cols (checked).
            self.launched("columns", || {
                unsafe { b.launch(Self::grid_for(n)) }.map(drop)
            })?;
        }
        Ok(CudaAct {
            buf: out,
            rows: x.rows,
            cols: len,
        })
    }
}
