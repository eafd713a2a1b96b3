//! The `Backend` trait: the ops of a transformer block over a backend's own
//! buffers. Activations are row-major `rows x cols` f32 matrices (one row
//! per token); weights stay in their GGUF type on the device.

use strata_model::arch::{Activation, RopeStyle};
use strata_model::GgmlType;

use crate::kv::{KvBlockId, KvGeometry};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("tensor {name:?}: {what}")]
    BadWeight { name: String, what: String },
    #[error("{backend}: out of memory allocating {bytes} bytes for {what}")]
    OutOfMemory {
        backend: String,
        bytes: u64,
        what: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// A weight's matrix shape from its GGUF dims, checked against its bytes:
/// `rows` rows of `cols` elements, `row_bytes` each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightShape {
    pub rows: usize,
    pub cols: usize,
    pub row_bytes: usize,
}

impl WeightShape {
    pub fn of(
        name: &str,
        dtype: GgmlType,
        dims: &[u64],
        bytes: usize,
    ) -> Result<Self, KernelError> {
        let bad = |what: String| KernelError::BadWeight {
            name: name.to_string(),
            what,
        };
        let cols = usize::try_from(*dims.first().ok_or_else(|| bad("no dimensions".into()))?)
            .map_err(|_| bad("too large".into()))?;
        let rows = usize::try_from(dims.iter().skip(1).product::<u64>())
            .map_err(|_| bad("too large".into()))?;
        let row_bytes = dtype
            .row_bytes(cols as u64)
            .ok_or_else(|| bad(format!("{cols} is not a whole number of {dtype} blocks")))?
            as usize;
        if bytes != row_bytes * rows {
            return Err(bad(format!("{bytes} bytes, expected {}", row_bytes * rows)));
        }
        Ok(WeightShape {
            rows,
            cols,
            row_bytes,
        })
    }

    /// 1-D weights (norms, biases, rope factors) as f32, which every
    /// backend keeps beside the raw bytes; `None` for matrices.
    pub fn vector_f32(
        &self,
        name: &str,
        dtype: GgmlType,
        bytes: &[u8],
    ) -> Result<Option<Vec<f32>>, KernelError> {
        if self.rows != 1 {
            return Ok(None);
        }
        let mut v = vec![0f32; self.cols];
        strata_model::quant::dequantize_row(dtype, bytes, &mut v).map_err(|e| {
            KernelError::BadWeight {
                name: name.to_string(),
                what: e.to_string(),
            }
        })?;
        Ok(Some(v))
    }
}

/// RoPE of one layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeConfig {
    pub style: RopeStyle,
    pub head_dim: usize,
    /// Rotated dimensions per head (<= head_dim).
    pub dims: usize,
    pub freq_base: f32,
    pub freq_scale: f32,
}

/// Which KV slots a batch writes and which positions each token attends.
/// Token `t` belongs to sequence `token_seq[t]` at position `positions[t]`;
/// it attends positions `max(0, pos + 1 - window) ..= pos` of its sequence.
#[derive(Debug, Clone)]
pub struct AttentionBatch<'a> {
    pub positions: &'a [u32],
    pub token_seq: &'a [u32],
    /// Block table of each sequence in the batch.
    pub block_tables: &'a [&'a [KvBlockId]],
    pub n_heads: usize,
    pub scale: f32,
    /// Apply `scale` to Q before the scores rather than to the scores
    /// (the same in exact arithmetic; see `HyperParams::scales_query`).
    pub scale_query: bool,
    pub window: Option<usize>,
}

pub trait Backend: Send + Sync {
    /// An activation matrix in device memory.
    type Act: Send;
    /// A weight tensor in device memory, in its GGUF type.
    type Weight: Send + Sync;
    /// A stage's KV block pool.
    type KvCache: Send;

    fn name(&self) -> String;

    /// (total, available) bytes of the memory this backend allocates from,
    /// when that is not host memory (a GPU's).
    fn device_memory_bytes(&self) -> Option<(u64, u64)> {
        None
    }
    /// Measured streaming bandwidth of that memory, bytes per second.
    fn device_bandwidth(&self) -> Option<f64> {
        None
    }
    /// Device time per kernel since the last call, where the backend keeps
    /// it (CUDA with `STRATA_CUDA_PROFILE=1`).
    fn profile_report(&self) -> Option<String> {
        None
    }

    /// Takes a weight from its GGUF bytes (`dims` in ggml order: row length first).
    fn load_weight(
        &self,
        name: &str,
        dtype: GgmlType,
        dims: &[u64],
        bytes: &[u8],
    ) -> Result<Self::Weight, KernelError>;
    fn new_kv_cache(&self, geometry: KvGeometry) -> Result<Self::KvCache, KernelError>;

    fn act_zeros(&self, rows: usize, cols: usize) -> Self::Act;
    fn act_from_host(&self, data: &[f32], rows: usize, cols: usize) -> Self::Act;
    fn act_to_host(&self, a: &Self::Act) -> Vec<f32>;
    fn act_shape(&self, a: &Self::Act) -> (usize, usize);
    /// Keeps the given rows (in order), for the output head on last positions.
    fn select_rows(&self, a: &Self::Act, rows: &[usize]) -> Self::Act;

    /// `out[t] = table[ids[t]] * scale`.
    fn embed(
        &self,
        table: &Self::Weight,
        ids: &[u32],
        scale: f32,
    ) -> Result<Self::Act, KernelError>;
    /// RMSNorm over groups of `w.len()` values (a whole row, or each head).
    fn rms_norm(&self, x: &Self::Act, w: &Self::Weight, eps: f32) -> Self::Act;
    /// `out[t] = W x[t]` (+ bias).
    fn matmul(&self, w: &Self::Weight, x: &Self::Act) -> Self::Act;
    fn add_bias(&self, x: &mut Self::Act, bias: &Self::Weight);
    /// Rotates every head of every row by its token's position.
    fn rope(
        &self,
        x: &mut Self::Act,
        positions: &[u32],
        rope: &RopeConfig,
        freq_factors: Option<&Self::Weight>,
    );
    /// `act(gate) * up`.
    fn gated(&self, gate: &Self::Act, up: &Self::Act, act: Activation) -> Self::Act;
    /// `x += y`.
    fn add_assign(&self, x: &mut Self::Act, y: &Self::Act);
    /// Writes this batch's K/V rows into their slots of `layer`, then
    /// attends: returns `rows x (n_heads * head_dim_v)`.
    fn attention(
        &self,
        cache: &mut Self::KvCache,
        layer: usize,
        q: &Self::Act,
        k: &Self::Act,
        v: &Self::Act,
        batch: &AttentionBatch<'_>,
    ) -> Self::Act;

    /// ggml's `mul_mat_id`: `experts` stacks `n_expert` matrices (GGUF dims
    /// `[cols, rows_per_expert, n_expert]`, loaded like any weight, so it has
    /// `rows_per_expert * n_expert` rows). `ids` holds `n_used` expert ids per
    /// token. Output row `t * n_used + j` is expert `ids[t * n_used + j]` times
    /// row `t` of `x` when `x` has `ids.len() / n_used` rows (gate/up), or times
    /// row `t * n_used + j` when `x` has `ids.len()` rows (down). The output has
    /// `ids.len()` rows of `rows_per_expert`. Ids are checked (`< n_expert`).
    fn matmul_id(
        &self,
        experts: &Self::Weight,
        n_expert: usize,
        x: &Self::Act,
        ids: &[u32],
        n_used: usize,
    ) -> Result<Self::Act, KernelError>;
    /// ggml's `add_id`: row `r` of `x` += row `ids[r]` of `bias` (GGUF dims `[cols, n_expert]`).
    fn add_bias_id(
        &self,
        x: &mut Self::Act,
        bias: &Self::Weight,
        ids: &[u32],
    ) -> Result<(), KernelError>;
    /// Weighted sum of each token's expert outputs, as llama.cpp's graph does it:
    /// `ggml_mul` (each `y[t*n_used+j]` times `weights[t*n_used+j]`, rounded to f32),
    /// then `ggml_add` left to right from `j = 0`. Output: `ids.len()/n_used` rows.
    fn moe_combine(
        &self,
        y: &Self::Act,
        weights: &[f32],
        n_used: usize,
    ) -> Result<Self::Act, KernelError>;
}
