//! The CUDA backend's mixture-of-experts ops (see `Backend::matmul_id`) over
//! a routing on the device (`routing.rs`); every failure, a bad shape or a
//! device error, is returned, never a panic.
//!
//! The matmul by id runs matvec.cu's `mmvq_id_*` / `mmv_id_*`: the plain
//! matvec code, one output row (token, slot) per grid row, its weight
//! pointer moved to the slot's expert.

use std::collections::HashMap;

use cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig, PushKernelArg};
use strata_model::GgmlType;

use super::matvec::{matvec_config, ACT_LEVEL_BYTES};
use super::routing::CudaRouting;
use super::{CudaAct, CudaBackend, CudaWeight, ACT_CHUNK_BYTES, ELEMENTWISE_THREADS};
use crate::backend::KernelError;
use crate::moe_route::{check_combine, check_matmul_id};
use crate::op_checks;

/// Output rows one matmul-by-id launch covers (CUDA's limit on grid_dim.y).
const MAX_SLOTS_PER_LAUNCH: usize = 65_535;

/// The matmul-by-id kernel of each weight type that has one.
pub(super) fn id_kernels(
    functions: &HashMap<&'static str, CudaFunction>,
) -> HashMap<GgmlType, (&'static str, CudaFunction)> {
    GgmlType::ALL
        .iter()
        .filter_map(|&dtype| {
            let suffix = CudaBackend::kernel_suffix(dtype)?;
            let prefix = if CudaBackend::is_float(dtype) {
                "mmv_id_"
            } else {
                "mmvq_id_"
            };
            let (&name, f) = functions.get_key_value(format!("{prefix}{suffix}").as_str())?;
            Some((dtype, (name, f.clone())))
        })
        .collect()
}

impl CudaBackend {
    pub(super) fn moe_matmul_id(
        &self,
        experts: &CudaWeight,
        x: &CudaAct,
        r: &CudaRouting,
    ) -> Result<CudaAct, KernelError> {
        let (slots, n_used) = (r.n_slots(), r.n_used);
        let shape = check_matmul_id(
            &experts.name,
            experts.rows,
            experts.cols,
            r.n_expert,
            (x.rows, x.cols),
            slots,
            n_used,
        )?;
        let rows = shape.rows_per_expert;
        let (kernel_name, kernel) = self.matvec_id.get(&experts.dtype).ok_or_else(|| {
            KernelError::Invalid(format!(
                "matmul_id {}: no CUDA matmul-by-id kernel for {}",
                experts.name, experts.dtype
            ))
        })?;
        let mut out = self.output::<f32>(slots * rows)?;
        if slots == 0 || rows == 0 {
            return Ok(CudaAct {
                buf: out,
                rows: slots,
                cols: rows,
            });
        }
        let x_div = if shape.per_slot { 1i32 } else { n_used as i32 };
        let (row_bytes, rows_i, cols) = (experts.row_bytes, rows as i32, experts.cols as i32);
        let float = Self::is_float(experts.dtype);
        // Quantized input: levels of every chunk, then their scales (see
        // matvec.rs); float input: the f32 rows.
        let launch = |input: &CudaSlice<u8>,
                      input_f32: &CudaSlice<f32>,
                      out: &mut CudaSlice<f32>| {
            let scales_at = x.rows * (experts.cols / 32) * ACT_LEVEL_BYTES;
            for first in (0..slots).step_by(MAX_SLOTS_PER_LAUNCH) {
                let n = (slots - first).min(MAX_SLOTS_PER_LAUNCH);
                let cfg = matvec_config(rows, experts.cols, float, n as u32);
                let first_i = first as i32;
                let quant = (!float).then(|| (input.slice(..scales_at), input.slice(scales_at..)));
                let mut b = self.stream.launch_builder(kernel);
                b.arg(&experts.data).arg(&row_bytes).arg(&rows_i).arg(&cols);
                match &quant {
                    Some((levels, scales)) => b.arg(levels).arg(scales),
                    None => b.arg(input_f32),
                };
                b.arg(&r.ids).arg(&x_div).arg(&first_i).arg(&mut *out);
                // SAFETY: every id is < n_expert (the routing's), so each slot
                // reads `rows` rows inside the stacked weight; slot s reads
                // input row s / x_div < x.rows and writes output row s.
                self.launched(kernel_name, || unsafe { b.launch(cfg) }.map(drop))?;
            }
            Ok::<(), KernelError>(())
        };
        if float {
            let none = self.output::<u8>(1)?;
            launch(&none, &x.buf, &mut out)?;
        } else {
            let chunks = experts.cols / 32;
            let n = x.rows * chunks;
            let mut xq = self.output::<u8>(n * ACT_CHUNK_BYTES)?;
            {
                let (mut levels, mut scales) = xq.split_at_mut(n * ACT_LEVEL_BYTES);
                let (tokens, xcols) = (x.rows as i32, x.cols as i32);
                let mut b = self.stream.launch_builder(self.f("quantize_act")?);
                b.arg(&x.buf)
                    .arg(&mut levels)
                    .arg(&mut scales)
                    .arg(&tokens)
                    .arg(&xcols);
                // SAFETY: one thread per 32-value chunk of x into its levels
                // and scale.
                self.launched("quantize_act", || {
                    unsafe { b.launch(Self::grid_for(n)) }.map(drop)
                })?;
            }
            launch(&xq, &x.buf, &mut out)?;
        }
        Ok(CudaAct {
            buf: out,
            rows: slots,
            cols: rows,
        })
    }

    pub(super) fn moe_add_bias_id(
        &self,
        x: &mut CudaAct,
        bias: &CudaWeight,
        r: &CudaRouting,
    ) -> Result<(), KernelError> {
        let bad = |what: String| KernelError::Invalid(format!("add_bias_id {}: {what}", bias.name));
        if bias.dtype != GgmlType::F32 {
            return Err(bad(format!("bias of type {}, F32 needed", bias.dtype)));
        }
        if bias.cols != x.cols || r.n_slots() != x.rows || r.n_expert > bias.rows {
            return Err(bad(format!(
                "{} ids of {} experts and {} bias rows of {} for {}x{} activations",
                r.n_slots(),
                r.n_expert,
                bias.rows,
                bias.cols,
                x.rows,
                x.cols
            )));
        }
        let n = x.rows * x.cols;
        if n == 0 {
            return Ok(());
        }
        // F32 rows: the weight's bytes are the values.
        // SAFETY: the allocation is the driver's (aligned for f32) and every
        // bit pattern is an f32; transmute checks the length.
        let bias_f32 =
            unsafe { bias.data.transmute::<f32>(bias.rows * bias.cols) }.ok_or_else(|| {
                bad(format!(
                    "{} bytes are not {} f32 values",
                    bias.data.len(),
                    bias.rows * bias.cols
                ))
            })?;
        let cols = x.cols as i32;
        let mut b = self.stream.launch_builder(self.f("add_id")?);
        b.arg(&mut x.buf)
            .arg(&bias_f32)
            .arg(&r.ids)
            .arg(&n)
            .arg(&cols);
        // SAFETY: n values of x; each id < n_expert <= bias.rows picks a row of
        // cols f32 values inside the bias.
        self.launched("add_id", || {
            unsafe { b.launch(Self::grid_for(n)) }.map(drop)
        })
    }

    pub(super) fn moe_mul_id(
        &self,
        x: &mut CudaAct,
        scale: &CudaWeight,
        r: &CudaRouting,
    ) -> Result<(), KernelError> {
        let len = scale.f32.as_ref().map(|v| v.len());
        op_checks::mul_id(&scale.name, len, r.n_expert, r.n_slots(), x.rows)?;
        let (Some(scale), n) = (&scale.f32, x.rows * x.cols) else {
            return Ok(());
        };
        if n == 0 {
            return Ok(());
        }
        let cols = x.cols as i32;
        let mut b = self.stream.launch_builder(self.f("mul_id")?);
        b.arg(&mut x.buf).arg(scale).arg(&r.ids).arg(&n).arg(&cols);
        // SAFETY: n values of x; each id < n_expert <= the scale's length.
        self.launched("mul_id", || {
            unsafe { b.launch(Self::grid_for(n)) }.map(drop)
        })
    }

    pub(super) fn moe_weighted_sum(
        &self,
        y: &CudaAct,
        r: &CudaRouting,
    ) -> Result<CudaAct, KernelError> {
        let n_used = r.n_used;
        let n_tokens = check_combine(y.rows, r.n_slots(), n_used)?;
        let n = n_tokens * y.cols;
        let mut out = self.output::<f32>(n)?;
        if n == 0 {
            return Ok(CudaAct {
                buf: out,
                rows: n_tokens,
                cols: y.cols,
            });
        }
        let (cols, n_used_i) = (y.cols as i32, n_used as i32);
        let mut b = self.stream.launch_builder(self.f("moe_combine")?);
        b.arg(&y.buf)
            .arg(&r.weights)
            .arg(&mut out)
            .arg(&n)
            .arg(&cols)
            .arg(&n_used_i);
        // SAFETY: y has n_tokens * n_used rows of cols values, w one weight
        // per row; out has n_tokens rows.
        self.launched("moe_combine", || {
            unsafe {
                b.launch(LaunchConfig {
                    grid_dim: ((n as u32).div_ceil(ELEMENTWISE_THREADS), 1, 1),
                    block_dim: (ELEMENTWISE_THREADS, 1, 1),
                    shared_mem_bytes: 0,
                })
            }
            .map(drop)
        })?;
        Ok(CudaAct {
            buf: out,
            rows: n_tokens,
            cols: y.cols,
        })
    }
}
