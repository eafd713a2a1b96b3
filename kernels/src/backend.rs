//! The `Backend` trait: the ops of a transformer block over a backend's own
//! buffers. Activations are row-major `rows x cols` f32 matrices (one row
//! per token); weights stay in their GGUF type on the device.

use strata_model::arch::{Activation, RopeStyle};
use strata_model::GgmlType;

use crate::kv::{KvBlockId, KvGeometry};
use crate::moe_route::Router;
use crate::recurrent::{DeltaNetShape, RecurrentBatch};

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
    /// Bad input to an op or a load: the batch or the file is at fault,
    /// the device is fine.
    #[error("{0}")]
    Invalid(String),
    /// The device failed under an op (a lost GPU, a kernel fault): its
    /// state is unknown and nothing more should run on it.
    #[error("{0}")]
    Device(String),
}

impl KernelError {
    /// Whether the device itself failed (as opposed to bad input).
    pub fn is_device(&self) -> bool {
        matches!(self, KernelError::Device(_))
    }
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
    /// YaRN context extension (`rope.scaling.type = yarn`); `None` rotates
    /// as plain RoPE (ggml with `ext_factor = 0`, `attn_factor = 1`).
    pub yarn: Option<Yarn>,
}

/// ggml's YaRN parameters (`ggml_rope_ext`'s `ext_factor`, `attn_factor`,
/// `beta_fast`, `beta_slow`, `n_ctx_orig`), as llama.cpp passes them.
///
/// How llama.cpp fills them (llama-model.cpp, llama-context.cpp, the
/// per-model `load_arch_hparams`):
/// - `freq_scale` (in [`RopeConfig`]) is `1 / rope.scaling.factor`
///   (gpt-oss: factor 32);
/// - `n_ctx_orig` is `rope.scaling.original_context_length`, else the
///   training context (gpt-oss: 4096);
/// - `ext_factor`: 1 when the scaling type is yarn (no GGUF key is read
///   for it, except by grok);
/// - `beta_fast` / `beta_slow`: 32 and 1, which mistral3 overrides from
///   `rope.scaling.yarn_beta_fast` / `yarn_beta_slow` when present;
/// - `attn_factor`: see [`Yarn::llama_cpp`]; it comes out near 1, and
///   `rope_yarn` then multiplies it by `1 + 0.1 ln(1 / freq_scale)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Yarn {
    /// Mix of extrapolated (unscaled) and interpolated theta on the ramp
    /// between the correction dims; 0 disables the ramp and the mscale term.
    pub ext_factor: f32,
    /// Magnitude multiplier of cos and sin (`mscale`).
    pub attn_factor: f32,
    pub beta_fast: f32,
    pub beta_slow: f32,
    /// The context the model was trained with before extension.
    pub n_ctx_orig: u32,
}

impl Yarn {
    /// llama.cpp's parameters for a yarn-scaled model with no command-line
    /// overrides (`llama_context`'s constructor). `factor` is
    /// `rope.scaling.factor`; `log_mul` is `rope.scaling.yarn_log_multiplier`
    /// (mistral3; 0 when absent); `rope_attn_factor` is
    /// `rope.scaling.attn_factor` (1 when absent); `beta_fast` and
    /// `beta_slow` 32 and 1 unless the GGUF names them. The arithmetic is
    /// llama.cpp's, with GCC's contraction of `a * b + 1` into one FMA.
    pub fn llama_cpp(
        factor: f32,
        n_ctx_orig: u32,
        beta_fast: f32,
        beta_slow: f32,
        log_mul: f32,
        rope_attn_factor: f32,
    ) -> Self {
        // get_mscale(scale, mscale) = scale <= 1 ? 1 : 0.1 * mscale * ln(scale) + 1
        let get_mscale = |scale: f32, mscale: f32| {
            if scale <= 1.0 {
                1.0
            } else {
                (0.1f32 * mscale).mul_add(scale.ln(), 1.0)
            }
        };
        // llama.cpp takes factor = 1 / freq_scale, freq_scale = 1 / rope.scaling.factor.
        let factor = 1.0 / (1.0 / factor);
        let mut attn_factor = if log_mul != 0.0 {
            get_mscale(factor, 1.0) / get_mscale(factor, log_mul)
        } else {
            get_mscale(factor, 1.0)
        };
        // Cancels the factor rope_yarn applies again when ext_factor != 0.
        attn_factor *= 1.0 / 0.1f32.mul_add(factor.ln(), 1.0);
        attn_factor *= rope_attn_factor;
        Yarn {
            ext_factor: 1.0,
            attn_factor,
            beta_fast,
            beta_slow,
            n_ctx_orig,
        }
    }

    /// What `rope_yarn` multiplies cos and sin by: `attn_factor`, times
    /// `1 + 0.1 ln(1 / freq_scale)` (fused as GCC contracts it) when
    /// `ext_factor != 0`.
    pub fn mscale(&self, freq_scale: f32) -> f32 {
        if self.ext_factor == 0.0 {
            return self.attn_factor;
        }
        self.attn_factor * 0.1f32.mul_add((1.0 / freq_scale).ln(), 1.0)
    }

    /// ggml's `ggml_rope_yarn_corr_dims`: the first and last rotated
    /// dimension pair of the ramp between extrapolation and interpolation.
    pub fn corr_dims(&self, dims: usize, freq_base: f32) -> [f32; 2] {
        // n_dims * ln(n_ctx_orig / (n_rot * 2 pi)) / (2 ln(base)), in f32.
        let corr_dim = |n_rot: f32| {
            dims as f32 * (self.n_ctx_orig as f32 / (n_rot * 2.0 * std::f32::consts::PI)).ln()
                / (2.0 * freq_base.ln())
        };
        let start = corr_dim(self.beta_fast).floor();
        let end = corr_dim(self.beta_slow).ceil();
        [start.max(0.0), end.min(dims as f32 - 1.0)]
    }
}

/// Element-wise functions, each as ggml-cpu computes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unary {
    /// `1 / (1 + expf(-x))` (`op_sigmoid`).
    Sigmoid,
    /// `x > 20 ? x : logf(1 + expf(x))` (`op_softplus`).
    Softplus,
    /// `x / (1 + exp(-x))` (`ggml_vec_silu_f32`: the vector `exp` on whole
    /// 16-lane chunks of a row, `expf` on the rest).
    Silu,
    /// `tanhf` (`op_tanh`).
    Tanh,
    /// ggml_gelu (tanh approximation) as ggml-cpu's `ggml_vec_gelu_f32`
    /// computes it: 0 at or below -10, x at or above 10, else the f16 table
    /// at f16(x).
    Gelu,
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
    /// (the same in exact arithmetic; see `AttentionSpec::scale_query`).
    pub scale_query: bool,
    pub window: Option<usize>,
    /// Attention sinks (gpt-oss): one logit per query head that joins the
    /// softmax's denominator but contributes no value.
    pub sinks: Option<&'a [f32]>,
    /// `decode[t]`: token `t` is a decode step, a generated token fed back
    /// alone for its sequence (empty: none is). The CPU backend gives a
    /// decode step over 512+ cells ggml's split-KV order, a prompt row the
    /// tiled order where `tiled` marks it and the one-chunk order
    /// otherwise, whatever the batch holds besides.
    pub decode: &'a [bool],
    /// `tiled[t]`: prompt row `t` takes ggml's tiled order (empty: none
    /// does), as llama.cpp computes a row whose ubatch has 64+ rows
    /// (`strata_model::attention_order`). Only the CPU backend's f16 cache
    /// has that order; the quantized caches and CUDA ignore it.
    pub tiled: &'a [bool],
}

/// Where a batch's tokens sit: what every layer of a stage reads to rotate,
/// attend (the same fields as [`AttentionBatch`]'s) and run its recurrent
/// ops (those of [`RecurrentBatch`]).
#[derive(Debug, Clone, Copy)]
pub struct BatchIndex<'a> {
    pub positions: &'a [u32],
    pub token_seq: &'a [u32],
    pub block_tables: &'a [&'a [KvBlockId]],
    /// Each sequence's recurrent state slot (its row of every recurrent
    /// layer's states, [`RecurrentBatch::seq_slots`]); empty for a stage
    /// without recurrent layers.
    pub seq_slots: &'a [u32],
}

/// Every op returns a `Result`: [`KernelError::Invalid`] for input the op
/// cannot take (shapes that do not match, a position with no KV slot),
/// [`KernelError::Device`] when the device failed under it.
pub trait Backend: Send + Sync {
    /// An activation matrix in device memory.
    type Act: Send;
    /// A weight tensor in device memory, in its GGUF type.
    type Weight: Send + Sync;
    /// A stage's KV block pool.
    type KvCache: Send;
    /// A batch's expert choices and weights (mixture of experts).
    type Routing: Send;
    /// What a stage keeps between runs of its layer range (the CUDA
    /// backend's recorded graphs).
    type LayerRuns: Send;

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

    fn act_zeros(&self, rows: usize, cols: usize) -> Result<Self::Act, KernelError>;
    fn act_from_host(
        &self,
        data: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<Self::Act, KernelError>;
    fn act_to_host(&self, a: &Self::Act) -> Result<Vec<f32>, KernelError>;
    fn act_shape(&self, a: &Self::Act) -> (usize, usize);
    /// Keeps the given rows (in order), for the output head on last positions.
    fn select_rows(&self, a: &Self::Act, rows: &[usize]) -> Result<Self::Act, KernelError>;

    /// `out[t] = table[ids[t]] * scale`.
    fn embed(
        &self,
        table: &Self::Weight,
        ids: &[u32],
        scale: f32,
    ) -> Result<Self::Act, KernelError>;
    /// RMSNorm over groups of `w.len()` values (a whole row, or each head).
    fn rms_norm(&self, x: &Self::Act, w: &Self::Weight, eps: f32)
        -> Result<Self::Act, KernelError>;
    /// `out[t] = W x[t]` (+ bias).
    fn matmul(&self, w: &Self::Weight, x: &Self::Act) -> Result<Self::Act, KernelError>;
    /// [`Self::matmul`] of one input by each weight (Q, K and V; gate and
    /// up), in order. CUDA quantizes the input once for all of them.
    fn matmul_each(
        &self,
        ws: &[&Self::Weight],
        x: &Self::Act,
    ) -> Result<Vec<Self::Act>, KernelError> {
        ws.iter().map(|w| self.matmul(w, x)).collect()
    }
    fn add_bias(&self, x: &mut Self::Act, bias: &Self::Weight) -> Result<(), KernelError>;
    /// Rotates every head of every row by its token's position.
    fn rope(
        &self,
        x: &mut Self::Act,
        positions: &[u32],
        rope: &RopeConfig,
        freq_factors: Option<&Self::Weight>,
    ) -> Result<(), KernelError>;
    /// `act(gate) * up`.
    fn gated(
        &self,
        gate: &Self::Act,
        up: &Self::Act,
        act: Activation,
    ) -> Result<Self::Act, KernelError>;
    /// `x += y`.
    fn add_assign(&self, x: &mut Self::Act, y: &Self::Act) -> Result<(), KernelError>;
    /// Ministral-3's attention temperature on Q: row `r` times the scale
    /// [`attn_temperature_scales`] gives its position (ggml_mul by a
    /// `[1, rows]` tensor). `floor_scale` is at least 1.
    fn attn_temperature(
        &self,
        x: &mut Self::Act,
        positions: &[u32],
        floor_scale: u32,
        temp_scale: f32,
    ) -> Result<(), KernelError>;
    /// `x = f(x)` element by element, in ggml's arithmetic ([`Unary`]).
    fn unary(&self, x: &mut Self::Act, f: Unary) -> Result<(), KernelError>;
    /// `x *= c` (ggml_scale).
    fn scale(&self, x: &mut Self::Act, c: f32) -> Result<(), KernelError>;
    /// `x *= y` element by element; `y` has `x`'s shape, or one column (a
    /// value per row, as ggml_mul broadcasts it).
    fn mul(&self, x: &mut Self::Act, y: &Self::Act) -> Result<(), KernelError>;
    /// `x[r][c] *= w[c mod w.len()]`: ggml_mul by a 1-D weight repeated
    /// along the row (`w.len()` divides the row).
    fn mul_weight(&self, x: &mut Self::Act, w: &Self::Weight) -> Result<(), KernelError>;
    /// RMSNorm without a weight over groups of `group` values (ggml_rms_norm
    /// alone).
    fn rms_norm_plain(
        &self,
        x: &Self::Act,
        group: usize,
        eps: f32,
    ) -> Result<Self::Act, KernelError>;
    /// Columns `start .. start + len` of every row.
    fn columns(&self, x: &Self::Act, start: usize, len: usize) -> Result<Self::Act, KernelError>;
    /// Sets the given rows to zero (a recurrent state slot a new sequence
    /// takes).
    fn zero_rows(&self, x: &mut Self::Act, rows: &[u32]) -> Result<(), KernelError>;
    /// Copies row `from[i]` of `x` over row `to[i]`, for each `i` (a
    /// recurrent state saved as a prefix-cache snapshot, or restored from
    /// one). No row is both copied and overwritten.
    fn copy_rows(&self, x: &mut Self::Act, from: &[u32], to: &[u32]) -> Result<(), KernelError>;
    /// Row `row` of `x`, on the host (a state snapshot written to disk).
    fn row_to_host(&self, x: &Self::Act, row: u32) -> Result<Vec<f32>, KernelError>;
    /// Overwrites row `row` of `x` with `data` (`cols` values: a state
    /// snapshot read back from disk).
    fn row_from_host(&self, x: &mut Self::Act, row: u32, data: &[f32]) -> Result<(), KernelError>;
    /// The short causal convolution of each sequence's run of `x` (`rows x
    /// channels`) with its state row of `state` (`(d_conv - 1) x channels`
    /// values, oldest first), which it updates. `w` is `ssm_conv1d.weight`
    /// (F32, GGUF dims `{d_conv, channels}`). Returns `rows x channels`:
    /// `y[t][ch] = Σ_i u[t + i][ch] w[ch][i]` over `u = [state; x]`
    /// (ggml's `ssm_conv`; see [`crate::cpu::delta_net::ssm_conv`]).
    fn ssm_conv(
        &self,
        x: &Self::Act,
        w: &Self::Weight,
        state: &mut Self::Act,
        batch: &RecurrentBatch<'_>,
    ) -> Result<Self::Act, KernelError>;
    /// The gated delta rule of each sequence's run (ggml's
    /// `gated_delta_net`; see [`crate::cpu::delta_net::gated_delta_net`]):
    /// `q`, `k` are `rows x (H_k S)` (L2-normed), `v` is `rows x (H_v S)`,
    /// `g` (log decay) and `beta` are `rows x H_v`; `state` has a row of
    /// `H_v S S` per slot. Returns `rows x (H_v S)`.
    #[allow(clippy::too_many_arguments)]
    fn delta_net(
        &self,
        shape: DeltaNetShape,
        q: &Self::Act,
        k: &Self::Act,
        v: &Self::Act,
        g: &Self::Act,
        beta: &Self::Act,
        state: &mut Self::Act,
        batch: &RecurrentBatch<'_>,
    ) -> Result<Self::Act, KernelError>;
    /// Writes this batch's K/V rows (`new_kv`) into their slots of `layer`,
    /// then attends: returns `rows x (n_heads * head_dim_v)`. Without
    /// `new_kv` it attends to what the layer holds: Gemma 4's KV-sharing
    /// layers read the KV an earlier layer wrote for this batch.
    fn attention(
        &self,
        cache: &mut Self::KvCache,
        layer: usize,
        q: &Self::Act,
        new_kv: Option<(&Self::Act, &Self::Act)>,
        batch: &AttentionBatch<'_>,
    ) -> Result<Self::Act, KernelError>;

    /// One block of `layer` as the cache stores it: its 32 K rows, then its
    /// 32 V rows (f16, or ggml blocks rotated as written): what the prefix
    /// cache saves to disk.
    fn kv_block_to_host(
        &self,
        cache: &Self::KvCache,
        layer: usize,
        block: KvBlockId,
    ) -> Result<Vec<u8>, KernelError>;
    /// Writes back bytes [`Self::kv_block_to_host`] gave, for the same
    /// geometry.
    fn kv_block_from_host(
        &self,
        cache: &mut Self::KvCache,
        layer: usize,
        block: KvBlockId,
        bytes: &[u8],
    ) -> Result<(), KernelError>;

    /// The router (llama.cpp's `build_moe_ffn` up to the expert weights,
    /// [`crate::moe_route::route`]'s arithmetic) over `logits`, one row of
    /// `router.n_expert` per token: which `n_used` experts each token takes,
    /// best first, and their weights. A backend keeps them where its MoE
    /// ops read them (the CUDA backend on the device: no copy to the host).
    fn route(&self, logits: &Self::Act, router: &Router) -> Result<Self::Routing, KernelError>;
    /// A routing given on the host (tests, and a prompt's replay): checked
    /// (`ids[i] < n_expert`, whole tokens of `n_used`, one weight per id).
    fn routing(
        &self,
        ids: &[u32],
        weights: &[f32],
        n_used: usize,
        n_expert: usize,
    ) -> Result<Self::Routing, KernelError>;
    /// The expert ids of a routing, on the host (for tests and logs).
    fn routing_to_host(&self, r: &Self::Routing) -> Result<(Vec<u32>, Vec<f32>), KernelError>;

    /// ggml's `mul_mat_id`: `experts` stacks the routing's `n_expert`
    /// matrices (GGUF dims `[cols, rows_per_expert, n_expert]`, loaded like
    /// any weight, so it has `rows_per_expert * n_expert` rows). Output row
    /// `t * n_used + j` is expert `ids[t * n_used + j]` times row `t` of `x`
    /// when `x` has one row per token (gate/up), or times row
    /// `t * n_used + j` when `x` has one row per slot (down). The output has
    /// `n_tokens * n_used` rows of `rows_per_expert`.
    fn matmul_id(
        &self,
        experts: &Self::Weight,
        x: &Self::Act,
        r: &Self::Routing,
    ) -> Result<Self::Act, KernelError>;
    /// ggml's `add_id`: row `s` of `x` += row `ids[s]` of `bias` (GGUF dims
    /// `[cols, n_expert]`).
    fn add_bias_id(
        &self,
        x: &mut Self::Act,
        bias: &Self::Weight,
        r: &Self::Routing,
    ) -> Result<(), KernelError>;
    /// Row `s` of `x` times `scale[ids[s]]`: each expert's output scale
    /// (Gemma 4's `ffn_down_exps.scale`, a 1-D weight of `n_expert`
    /// values; llama.cpp's `build_lora_mm_id` `ggml_mul`).
    fn mul_id(
        &self,
        x: &mut Self::Act,
        scale: &Self::Weight,
        r: &Self::Routing,
    ) -> Result<(), KernelError>;
    /// Weighted sum of each token's expert outputs, as llama.cpp's graph does it:
    /// `ggml_mul` (each `y[t*n_used+j]` times `weights[t*n_used+j]`, rounded to f32),
    /// then `ggml_add` left to right from `j = 0`. Output: one row per token.
    fn moe_combine(&self, y: &Self::Act, r: &Self::Routing) -> Result<Self::Act, KernelError>;

    /// A stage's [`Backend::LayerRuns`], empty.
    fn layer_runs(&self) -> Self::LayerRuns;
    /// Runs a stage's layer range over `x` for the batch `index` describes:
    /// `run` makes the op calls. A backend may record what `run` launches
    /// and replay it on later batches of the same shape without calling
    /// `run` (CUDA graphs), so `run` must launch the same work for batches
    /// that agree in token count, sequence count and `x`'s width, reading
    /// what varies only through `index` and `x` (the recurrent ops' state
    /// slots through `index.seq_slots`; slots are cleared with
    /// [`Backend::zero_rows`] before, not inside, `run`).
    fn run_layers<E: From<KernelError>>(
        &self,
        runs: &mut Self::LayerRuns,
        index: &BatchIndex<'_>,
        x: Self::Act,
        run: &mut dyn FnMut(Self::Act) -> Result<Self::Act, E>,
    ) -> Result<Self::Act, E> {
        let _ = (runs, index);
        run(x)
    }
}

/// Per-token attention temperature (llama.cpp's `build_inp_attn_scale`,
/// Llama-4 style, used by Ministral-3):
/// `scale = ln(floor(pos / floor_scale) + 1) * attn_temp_scale + 1`, with
/// llama.cpp's types: the floor in f32, the log and the rest in f64 (the
/// multiply-add fused, as GCC contracts it), rounded to f32. `floor_scale`
/// is the model's `n_attn_temp_floor_scale` (Ministral-3:
/// `rope.scaling.original_context_length`), `attn_temp_scale` its
/// `attention.temperature_scale`; llama.cpp's position offset is 0 for it.
pub fn attn_temperature_scales(
    positions: &[u32],
    floor_scale: u32,
    attn_temp_scale: f32,
) -> Vec<f32> {
    positions
        .iter()
        .map(|&p| {
            let floored = (p as f32 / floor_scale as f32).floor();
            (floored as f64 + 1.0)
                .ln()
                .mul_add(attn_temp_scale as f64, 1.0) as f32
        })
        .collect()
}
