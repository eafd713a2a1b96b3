//! The CPU backend: reference for every other backend, and a real backend
//! for CPU-only boxes. Weights stay quantized; activations are quantized once
//! per matmul and every weight row is dotted in place (`dot`). Work is split
//! over rayon's pool (size it with `--threads`).

mod attention;
mod attention_quant;
mod attention_split;
mod attention_tiled;
pub mod delta_net;
pub mod dot;
mod elementwise;
pub(crate) mod f32_sums;
mod matmul;
mod moe;
mod ops;

use strata_model::arch::Activation;
use strata_model::quant::dequantize_row;
use strata_model::GgmlType;

use crate::backend::{
    attn_temperature_scales, AttentionBatch, Backend, KernelError, RopeConfig, Unary, WeightShape,
};
use crate::kv::{KvBlockId, KvGeometry};
use crate::moe_route::{HostRouting, Router};
use crate::op_checks;
use crate::recurrent::{DeltaNetShape, RecurrentBatch};

pub use attention::CpuKvCache;
pub(crate) use ops::expf_ggml;

/// Runs `f` compiled for AVX2 + FMA where the CPU has them: ops that use
/// `f32::mul_add` to follow ggml's fused arithmetic, which is otherwise a
/// libm call per use. (The closure is inlined into the wrapper.)
#[inline(always)]
pub(crate) fn fused<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if dot::fma_detected() {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn run<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the features were detected.
        return unsafe { run(f) };
    }
    f()
}

/// Row-major `rows x cols` f32 activations.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuAct {
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

impl CpuAct {
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

/// A weight in its GGUF type: `rows` rows of `cols` elements.
#[derive(Debug, Clone)]
pub struct CpuWeight {
    pub name: String,
    pub dtype: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub row_bytes: usize,
    pub bytes: Vec<u8>,
    /// Dequantized copy for small 1-D tensors (norms, biases, rope factors).
    pub f32: Option<Vec<f32>>,
}

impl CpuWeight {
    pub fn row_data(&self, r: usize) -> &[u8] {
        &self.bytes[r * self.row_bytes..(r + 1) * self.row_bytes]
    }
    /// A 1-D weight's f32 values, checked to fit rows of `cols` (see
    /// [`op_checks::vector`]).
    fn vector(&self, op: &str, cols: usize, whole_rows: bool) -> Result<&[f32], KernelError> {
        let v = self.f32.as_deref();
        op_checks::vector(op, &self.name, v.map(<[f32]>::len), cols, whole_rows)?;
        Ok(v.unwrap_or_default())
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct CpuBackend;

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend
    }
}

impl Backend for CpuBackend {
    type Act = CpuAct;
    type Weight = CpuWeight;
    type KvCache = CpuKvCache;
    type Routing = HostRouting;
    type LayerRuns = ();

    fn name(&self) -> String {
        format!(
            "cpu ({} threads, {})",
            rayon::current_num_threads(),
            dot::simd_name()
        )
    }

    fn load_weight(
        &self,
        name: &str,
        dtype: GgmlType,
        dims: &[u64],
        bytes: &[u8],
    ) -> Result<CpuWeight, KernelError> {
        let shape = WeightShape::of(name, dtype, dims, bytes.len())?;
        let f32 = shape.vector_f32(name, dtype, bytes)?;
        let WeightShape {
            rows,
            cols,
            row_bytes,
        } = shape;
        Ok(CpuWeight {
            name: name.to_string(),
            dtype,
            rows,
            cols,
            row_bytes,
            bytes: bytes.to_vec(),
            f32,
        })
    }

    fn new_kv_cache(&self, geometry: KvGeometry) -> Result<CpuKvCache, KernelError> {
        CpuKvCache::new(geometry)
    }

    fn act_zeros(&self, rows: usize, cols: usize) -> Result<CpuAct, KernelError> {
        Ok(CpuAct {
            data: vec![0.0; rows * cols],
            rows,
            cols,
        })
    }

    fn act_from_host(&self, data: &[f32], rows: usize, cols: usize) -> Result<CpuAct, KernelError> {
        op_checks::act_data(data.len(), rows, cols)?;
        Ok(CpuAct {
            data: data.to_vec(),
            rows,
            cols,
        })
    }

    fn act_to_host(&self, a: &CpuAct) -> Result<Vec<f32>, KernelError> {
        Ok(a.data.clone())
    }

    fn act_shape(&self, a: &CpuAct) -> (usize, usize) {
        (a.rows, a.cols)
    }

    fn select_rows(&self, a: &CpuAct, rows: &[usize]) -> Result<CpuAct, KernelError> {
        op_checks::rows_in(rows, a.rows)?;
        let mut data = Vec::with_capacity(rows.len() * a.cols);
        for &r in rows {
            data.extend_from_slice(a.row(r));
        }
        Ok(CpuAct {
            data,
            rows: rows.len(),
            cols: a.cols,
        })
    }

    fn embed(&self, table: &CpuWeight, ids: &[u32], scale: f32) -> Result<CpuAct, KernelError> {
        let mut out = self.act_zeros(ids.len(), table.cols)?;
        for (t, &id) in ids.iter().enumerate() {
            if id as usize >= table.rows {
                return Err(KernelError::Invalid(format!(
                    "token id {id} is outside the vocabulary of {}",
                    table.rows
                )));
            }
            let dst = &mut out.data[t * table.cols..(t + 1) * table.cols];
            dequantize_row(table.dtype, table.row_data(id as usize), dst).map_err(|e| {
                KernelError::BadWeight {
                    name: table.name.clone(),
                    what: e.to_string(),
                }
            })?;
            if scale != 1.0 {
                dst.iter_mut().for_each(|v| *v *= scale);
            }
        }
        Ok(out)
    }

    fn rms_norm(&self, x: &CpuAct, w: &CpuWeight, eps: f32) -> Result<CpuAct, KernelError> {
        let wv = w.vector("rms_norm", x.cols, false)?;
        Ok(ops::rms_norm(x, wv, eps))
    }

    fn matmul(&self, w: &CpuWeight, x: &CpuAct) -> Result<CpuAct, KernelError> {
        op_checks::matmul(&w.name, x.cols, w.cols)?;
        Ok(matmul::matmul(w, x))
    }

    fn add_bias(&self, x: &mut CpuAct, bias: &CpuWeight) -> Result<(), KernelError> {
        let b = bias.vector("add_bias", x.cols, true)?;
        x.data
            .chunks_mut(x.cols)
            .for_each(|row| row.iter_mut().zip(b).for_each(|(v, b)| *v += b));
        Ok(())
    }

    fn rope(
        &self,
        x: &mut CpuAct,
        positions: &[u32],
        rope: &RopeConfig,
        freq_factors: Option<&CpuWeight>,
    ) -> Result<(), KernelError> {
        let ff = freq_factors.map(|w| w.f32.as_deref());
        op_checks::rope(
            x.rows,
            x.cols,
            positions.len(),
            rope,
            ff.map(|f| f.map(<[f32]>::len)),
        )?;
        ops::rope(x, positions, rope, ff.flatten());
        Ok(())
    }

    fn gated(&self, gate: &CpuAct, up: &CpuAct, act: Activation) -> Result<CpuAct, KernelError> {
        op_checks::same_shape("gated", (gate.rows, gate.cols), (up.rows, up.cols))?;
        Ok(ops::gated(gate, up, act))
    }

    fn add_assign(&self, x: &mut CpuAct, y: &CpuAct) -> Result<(), KernelError> {
        op_checks::same_shape("add_assign", (x.rows, x.cols), (y.rows, y.cols))?;
        x.data.iter_mut().zip(&y.data).for_each(|(a, b)| *a += b);
        Ok(())
    }

    fn attn_temperature(
        &self,
        x: &mut CpuAct,
        positions: &[u32],
        floor_scale: u32,
        temp_scale: f32,
    ) -> Result<(), KernelError> {
        op_checks::temperature(positions.len(), x.rows, floor_scale)?;
        if x.cols == 0 {
            return Ok(());
        }
        let scales = attn_temperature_scales(positions, floor_scale, temp_scale);
        x.data
            .chunks_mut(x.cols)
            .zip(&scales)
            .for_each(|(row, &s)| row.iter_mut().for_each(|v| *v *= s));
        Ok(())
    }

    fn unary(&self, x: &mut CpuAct, f: Unary) -> Result<(), KernelError> {
        elementwise::unary(x, f);
        Ok(())
    }

    fn scale(&self, x: &mut CpuAct, c: f32) -> Result<(), KernelError> {
        elementwise::scale(x, c);
        Ok(())
    }

    fn mul(&self, x: &mut CpuAct, y: &CpuAct) -> Result<(), KernelError> {
        op_checks::mul((x.rows, x.cols), (y.rows, y.cols))?;
        elementwise::mul(x, y);
        Ok(())
    }

    fn mul_weight(&self, x: &mut CpuAct, w: &CpuWeight) -> Result<(), KernelError> {
        let wv = w.vector("mul_weight", x.cols, false)?;
        elementwise::mul_vector(x, wv);
        Ok(())
    }

    fn rms_norm_plain(&self, x: &CpuAct, group: usize, eps: f32) -> Result<CpuAct, KernelError> {
        op_checks::groups("rms_norm_plain", x.cols, group)?;
        Ok(ops::rms_norm_groups(x, group, eps, None))
    }

    fn columns(&self, x: &CpuAct, start: usize, len: usize) -> Result<CpuAct, KernelError> {
        op_checks::columns(x.cols, start, len)?;
        Ok(elementwise::columns(x, start, len))
    }

    fn zero_rows(&self, x: &mut CpuAct, rows: &[u32]) -> Result<(), KernelError> {
        op_checks::state_rows(rows, x.rows)?;
        for &r in rows {
            let r = r as usize;
            x.data[r * x.cols..(r + 1) * x.cols].fill(0.0);
        }
        Ok(())
    }

    fn copy_rows(&self, x: &mut CpuAct, from: &[u32], to: &[u32]) -> Result<(), KernelError> {
        op_checks::copy_rows(from, to, x.rows)?;
        let cols = x.cols;
        for (&f, &t) in from.iter().zip(to) {
            let (f, t) = (f as usize * cols, t as usize * cols);
            x.data.copy_within(f..f + cols, t);
        }
        Ok(())
    }

    fn row_to_host(&self, x: &CpuAct, row: u32) -> Result<Vec<f32>, KernelError> {
        op_checks::host_row(row, x.rows, None, x.cols)?;
        let r = row as usize * x.cols;
        Ok(x.data[r..r + x.cols].to_vec())
    }

    fn row_from_host(&self, x: &mut CpuAct, row: u32, data: &[f32]) -> Result<(), KernelError> {
        op_checks::host_row(row, x.rows, Some(data.len()), x.cols)?;
        let r = row as usize * x.cols;
        x.data[r..r + x.cols].copy_from_slice(data);
        Ok(())
    }

    fn ssm_conv(
        &self,
        x: &CpuAct,
        w: &CpuWeight,
        state: &mut CpuAct,
        batch: &RecurrentBatch<'_>,
    ) -> Result<CpuAct, KernelError> {
        delta_net::ssm_conv_batch(x, w, state, batch)
    }

    fn delta_net(
        &self,
        shape: DeltaNetShape,
        q: &CpuAct,
        k: &CpuAct,
        v: &CpuAct,
        g: &CpuAct,
        beta: &CpuAct,
        state: &mut CpuAct,
        batch: &RecurrentBatch<'_>,
    ) -> Result<CpuAct, KernelError> {
        let acts = delta_net::DeltaNetActs { q, k, v, g, beta };
        delta_net::gated_delta_net_batch(shape, acts, state, batch)
    }

    fn attention(
        &self,
        cache: &mut CpuKvCache,
        layer: usize,
        q: &CpuAct,
        new_kv: Option<(&CpuAct, &CpuAct)>,
        batch: &AttentionBatch<'_>,
    ) -> Result<CpuAct, KernelError> {
        let shape = |a: &CpuAct| (a.rows, a.cols);
        op_checks::attention(
            cache.geometry(),
            layer,
            shape(q),
            new_kv.map(|(k, v)| (shape(k), shape(v))),
            batch,
        )?;
        if let Some((k, v)) = new_kv {
            cache.write(layer, k, v, batch);
        }
        Ok(cache.attend(layer, q, batch))
    }

    fn kv_block_to_host(
        &self,
        cache: &CpuKvCache,
        layer: usize,
        block: KvBlockId,
    ) -> Result<Vec<u8>, KernelError> {
        cache
            .geometry()
            .check_block(layer, block, None)
            .map_err(KernelError::Invalid)?;
        Ok(cache.block_to_bytes(layer, block as usize))
    }

    fn kv_block_from_host(
        &self,
        cache: &mut CpuKvCache,
        layer: usize,
        block: KvBlockId,
        bytes: &[u8],
    ) -> Result<(), KernelError> {
        cache
            .geometry()
            .check_block(layer, block, Some(bytes.len()))
            .map_err(KernelError::Invalid)?;
        cache.block_from_bytes(layer, block as usize, bytes);
        Ok(())
    }

    fn route(&self, logits: &CpuAct, router: &Router) -> Result<HostRouting, KernelError> {
        router.route_host(&logits.data)
    }

    fn routing(
        &self,
        ids: &[u32],
        weights: &[f32],
        n_used: usize,
        n_expert: usize,
    ) -> Result<HostRouting, KernelError> {
        HostRouting::new(ids, weights, n_used, n_expert)
    }

    fn routing_to_host(&self, r: &HostRouting) -> Result<(Vec<u32>, Vec<f32>), KernelError> {
        Ok((r.ids.clone(), r.weights.clone()))
    }

    fn matmul_id(
        &self,
        experts: &CpuWeight,
        x: &CpuAct,
        r: &HostRouting,
    ) -> Result<CpuAct, KernelError> {
        moe::matmul_id(experts, x, r)
    }

    fn mul_id(
        &self,
        x: &mut CpuAct,
        scale: &CpuWeight,
        r: &HostRouting,
    ) -> Result<(), KernelError> {
        let len = scale.f32.as_ref().map(Vec::len);
        op_checks::mul_id(&scale.name, len, r.n_expert, r.ids.len(), x.rows)?;
        let (Some(s), cols) = (&scale.f32, x.cols.max(1)) else {
            return Ok(());
        };
        for (row, &e) in x.data.chunks_exact_mut(cols).zip(&r.ids) {
            row.iter_mut().for_each(|v| *v *= s[e as usize]);
        }
        Ok(())
    }

    fn add_bias_id(
        &self,
        x: &mut CpuAct,
        bias: &CpuWeight,
        r: &HostRouting,
    ) -> Result<(), KernelError> {
        moe::add_bias_id(x, bias, r)
    }

    fn moe_combine(&self, y: &CpuAct, r: &HostRouting) -> Result<CpuAct, KernelError> {
        moe::moe_combine(y, r)
    }

    fn layer_runs(&self) {}
}
