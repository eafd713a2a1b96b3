//! The two recurrent ops of Qwen3.5's gated DeltaNet mixer, on the CPU in
//! ggml's arithmetic: the short causal convolution with its state
//! ([`ssm_conv`]) and the gated delta rule ([`gated_delta_net`]). One
//! sequence per call; a batch of sequences is a loop over calls, each with
//! its own states (the recurrence is per sequence).
//!
//! Followed: llama.cpp `0c1e570`, `ggml/src/ggml-cpu/ops.cpp`
//! (`ggml_compute_forward_ssm_conv_f32`,
//! `ggml_compute_forward_gated_delta_net_one_chunk`) and
//! `ggml/src/ggml-cpu/vec.{h,cpp}` (`ggml_vec_dot_f32`, `ggml_vec_mad_f32`,
//! `ggml_vec_scale_f32`) as built for the reference (`~/.cache/strata/
//! llama-build`): GCC 12.2, `-O3 -march=native -std=gnu++17` on an AVX-512
//! CPU, so `ggml_vec_dot_f32` takes its AVX-512 path (64-value steps into 4
//! x 16 lanes), element-wise `y += x * v` is one fused multiply-add, and
//! scalar sums `s += x * y` are compiled as [`sum_products_gcc`] says (read
//! in the disassembly of that `libggml-cpu.so`). `kernels/tests/
//! cpu_delta_net_ggml.rs` checks both ops against ggml's, bit for bit. The
//! graph
//! around them is `src/models/qwen35.cpp`
//! (`llama_model_qwen35::graph::build_layer_attn_linear`) and
//! `src/models/delta-net-base.cpp` (`build_conv_state`,
//! `build_delta_net_fused`).
//!
//! What the graph does around these ops (not here):
//! - before the conv: `qkv = W_qkv x`, the conv input (q, k, v channels);
//! - after it: `ggml_silu` on the whole conv output, then the split into q
//!   (`H_k` heads), k (`H_k` heads) and v (`H_v` heads);
//! - q and k are L2-normalised per head by `build_gdn_l2_norm`
//!   (`ggml_scale(ggml_rms_norm(x, eps / S), 1 / sqrtf(S))`);
//! - `beta = sigmoid(W_beta x)` and `g = softplus(W_alpha x + ssm_dt) *
//!   ssm_a` (`ssm_a = -exp(A_log)`, so `g <= 0`);
//! - after the recurrence: per-head RMSNorm with `ssm_norm`, times
//!   `silu(z)`, then `ssm_out`.
//!
//! The op itself applies `exp(g)` and the output scale `1 / sqrtf(S)`.

use rayon::prelude::*;

use super::f32_sums::{dot_f32_ggml, sum_products_gcc};
use super::{fused, CpuAct, CpuWeight};
use crate::backend::KernelError;
use crate::op_checks;
pub use crate::recurrent::DeltaNetShape;
use crate::recurrent::RecurrentBatch;

/// The short causal convolution of one sequence (ggml's `ssm_conv` as
/// qwen35 uses it), with its state.
///
/// - `x`: `n_tokens x channels`, row-major (the tokens' `W_qkv x` rows);
/// - `state`: `(d_conv - 1) x channels`, row-major, oldest row first: the
///   last `d_conv - 1` inputs before `x` (zeros for a new sequence);
/// - `weights`: `channels x d_conv` (`ssm_conv1d.weight`, GGUF dims
///   `{d_conv, channels}`: each channel's taps contiguous, oldest first).
///
/// Returns `n_tokens x channels`, with `u = [state; x]` (rows in time):
///
/// ```text
/// y[t][ch] = Σ_{i = 0}^{d_conv - 1} u[t + i][ch] · w[ch][i]
/// ```
///
/// summed as `ggml_compute_forward_ssm_conv_f32` does (`sumf += s * c`
/// from `0.0f`, `i` ascending) in the arithmetic GCC gave that loop
/// ([`sum_products_gcc`]: with `d_conv = 4`, four rounded products added in
/// order).
/// `state` becomes the last `d_conv - 1` rows of `u` (ggml's
/// `conv_state_last` view, copied back whole). The SiLU the graph applies
/// next (`ggml_silu` on `conv_output_raw`) is the caller's.
///
/// ggml keeps the state time-fastest (`{d_conv - 1, channels}`); here it is
/// token-major like `x`. The values are the same, transposed.
pub fn ssm_conv(
    x: &[f32],
    n_tokens: usize,
    channels: usize,
    state: &mut [f32],
    weights: &[f32],
    d_conv: usize,
) -> Result<Vec<f32>, KernelError> {
    if d_conv == 0 {
        return Err(invalid("ssm_conv: d_conv is 0"));
    }
    let history = d_conv - 1;
    check_len("ssm_conv", "x", x.len(), n_tokens * channels)?;
    check_len("ssm_conv", "conv state", state.len(), history * channels)?;
    check_len("ssm_conv", "weights", weights.len(), channels * d_conv)?;

    // u = concat(state, x) along time (ggml_concat(conv_states, qkvᵀ, 0)).
    let mut u = Vec::with_capacity((history + n_tokens) * channels);
    u.extend_from_slice(state);
    u.extend_from_slice(x);

    let mut y = vec![0f32; n_tokens * channels];
    fused(|| {
        for (t, y_t) in y.chunks_exact_mut(channels.max(1)).enumerate() {
            for (ch, (y, w)) in y_t.iter_mut().zip(weights.chunks_exact(d_conv)).enumerate() {
                *y = sum_products_gcc(d_conv, 0.0, |i| (u[(t + i) * channels + ch], w[i]));
            }
        }
    });
    state.copy_from_slice(&u[n_tokens * channels..]);
    Ok(y)
}

/// The inputs of one sequence's gated delta rule, token-major rows:
/// - `q`, `k`: `n_tokens x (H_k·S)`, L2-normalised per head by the graph;
/// - `v`: `n_tokens x (H_v·S)`;
/// - `g`: `n_tokens x H_v`, the log decay (`≤ 0`; the op takes `exp`);
/// - `beta`: `n_tokens x H_v`, already through the sigmoid.
#[derive(Debug, Clone, Copy)]
pub struct DeltaNetInput<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub g: &'a [f32],
    pub beta: &'a [f32],
    pub n_tokens: usize,
}

/// The gated delta rule of one sequence, token by token, as
/// `ggml_compute_forward_gated_delta_net_one_chunk` runs it for qwen35
/// (scalar gate, one state snapshot, `K = 1`).
///
/// Value head `h` reads key head `h mod H_k` (ggml: `iq1 = iv1 % neq1`;
/// the converter stores V heads tiled so that this is the model's
/// grouping). With `S[i][j]` (`i` over keys, `j` over values) its state is
/// stored transposed, `state[h][j][i] = S[i][j]`, as ggml's `[S_v, S_v,
/// H_v]` state tensor, so `state` is `H_v x S x S`. Per token `t`:
///
/// ```text
/// S      ← exp(g_t) · S                      ggml_vec_scale_f32 (expf: libm)
/// δ_j    ← (v_j − Σ_i S[i][j]·k_i) · β_t     ggml_vec_dot_f32 per j
/// S[i][j] ← S[i][j] + k_i·δ_j                ggml_vec_mad_f32 (fused)
/// o_j    ← (Σ_i S[i][j]·q_i) · (1 / sqrtf(S)) ggml_vec_dot_f32 per j
/// ```
///
/// i.e. `S ← exp(g)·S + k ⊗ β(v − (exp(g)·S)ᵀk)`, `o = Sᵀq / √S`, the
/// output read after the update. Returns `o` as `n_tokens x (H_v·S)`
/// (ggml's `[S_v, H_v, n_tokens]`); `state` holds the state after the last
/// token. Prompts and decode steps take this same path (llama.cpp's fused
/// op for both: `cparams.fused_gdn_ar` and `fused_gdn_ch`).
pub fn gated_delta_net(
    shape: DeltaNetShape,
    input: DeltaNetInput<'_>,
    state: &mut [f32],
) -> Result<Vec<f32>, KernelError> {
    shape.check()?;
    let DeltaNetShape {
        head_dim: s,
        n_k_heads,
        n_v_heads,
    } = shape;
    let t = input.n_tokens;
    let op = "gated_delta_net";
    check_len(op, "q", input.q.len(), t * n_k_heads * s)?;
    check_len(op, "k", input.k.len(), t * n_k_heads * s)?;
    check_len(op, "v", input.v.len(), t * n_v_heads * s)?;
    check_len(op, "g", input.g.len(), t * n_v_heads)?;
    check_len(op, "beta", input.beta.len(), t * n_v_heads)?;
    check_len(op, "state", state.len(), shape.state_len())?;

    if t == 0 {
        return Ok(Vec::new());
    }
    // Heads are independent: one task per head, each writing its own
    // state and a head-major output that is interleaved afterwards.
    let mut out_by_head = vec![0f32; n_v_heads * t * s];
    let head = |(h, (m, o)): (usize, (&mut [f32], &mut [f32]))| {
        run_head_fma(shape, &input, h, m, o);
    };
    if shape.state_len() * t <= super::ops::SERIAL_MAX_VALUES {
        let heads = state
            .chunks_exact_mut(s * s)
            .zip(out_by_head.chunks_exact_mut(t * s));
        heads.enumerate().for_each(head);
    } else {
        let heads = state
            .par_chunks_exact_mut(s * s)
            .zip(out_by_head.par_chunks_exact_mut(t * s));
        heads.enumerate().for_each(head);
    }

    let mut out = vec![0f32; t * n_v_heads * s];
    for (h, o_h) in out_by_head.chunks_exact(t * s).enumerate() {
        for (tok, o) in o_h.chunks_exact(s).enumerate() {
            let at = (tok * n_v_heads + h) * s;
            out[at..at + s].copy_from_slice(o);
        }
    }
    Ok(out)
}

/// [`run_head`] compiled with FMA where the CPU has it: its `mul_add`s are
/// otherwise a libm call each (a closure handed to `fused` is not always
/// inlined into it; this one is too big).
fn run_head_fma(
    shape: DeltaNetShape,
    input: &DeltaNetInput<'_>,
    h: usize,
    m: &mut [f32],
    o: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if super::dot::fma_detected() {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn with_fma(
            shape: DeltaNetShape,
            input: &DeltaNetInput<'_>,
            h: usize,
            m: &mut [f32],
            o: &mut [f32],
        ) {
            run_head(shape, input, h, m, o)
        }
        // SAFETY: the features were detected.
        return unsafe { with_fma(shape, input, h, m, o) };
    }
    run_head(shape, input, h, m, o)
}

/// Value head `h`'s tokens: `m` is its transposed state (`m[j][i] =
/// S[i][j]`), `o` its output, token-major `n_tokens x S`.
#[inline(always)]
fn run_head(
    shape: DeltaNetShape,
    input: &DeltaNetInput<'_>,
    h: usize,
    m: &mut [f32],
    o: &mut [f32],
) {
    let s = shape.head_dim;
    let kh = h % shape.n_k_heads;
    let scale = 1.0 / (s as f32).sqrt();
    for tok in 0..input.n_tokens {
        let qk_at = (tok * shape.n_k_heads + kh) * s;
        let q = &input.q[qk_at..qk_at + s];
        let k = &input.k[qk_at..qk_at + s];
        let v_at = (tok * shape.n_v_heads + h) * s;
        let v = &input.v[v_at..v_at + s];
        let beta = input.beta[tok * shape.n_v_heads + h];
        let decay = input.g[tok * shape.n_v_heads + h].exp();
        let o = &mut o[tok * s..(tok + 1) * s];
        // ggml makes four passes over the state (scale, k dots, updates, q
        // dots); each row's values depend on that row alone, so one pass
        // row by row gives the same bits.
        for ((m_j, &v_j), o_j) in m.chunks_exact_mut(s).zip(v).zip(o) {
            m_j.iter_mut().for_each(|x| *x *= decay);
            let d = (v_j - dot_f32_ggml(m_j, k)) * beta;
            m_j.iter_mut()
                .zip(k)
                .for_each(|(m, &k)| *m = k.mul_add(d, *m));
            *o_j = dot_f32_ggml(m_j, q) * scale;
        }
    }
}

/// [`ssm_conv`] over a batch: each sequence's run with its state row.
/// `w` is `ssm_conv1d.weight` (F32, `channels` rows of `d_conv` taps).
pub(crate) fn ssm_conv_batch(
    x: &CpuAct,
    w: &CpuWeight,
    state: &mut CpuAct,
    batch: &RecurrentBatch<'_>,
) -> Result<CpuAct, KernelError> {
    let (channels, d_conv) = (x.cols, w.cols);
    op_checks::ssm_conv(&w.name, w.dtype, (w.rows, d_conv), channels, state.cols)?;
    let runs = batch.runs(x.rows, state.rows)?;
    let weights: Vec<f32> = w
        .bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let mut out = vec![0f32; x.rows * channels];
    let len = state.cols;
    for (slot, first, n) in runs {
        let rows = first * channels..(first + n) * channels;
        let st = &mut state.data[slot * len..(slot + 1) * len];
        let y = ssm_conv(&x.data[rows.clone()], n, channels, st, &weights, d_conv)?;
        out[rows].copy_from_slice(&y);
    }
    Ok(CpuAct {
        data: out,
        rows: x.rows,
        cols: channels,
    })
}

/// The inputs of [`gated_delta_net_batch`], one row per token.
pub(crate) struct DeltaNetActs<'a> {
    pub q: &'a CpuAct,
    pub k: &'a CpuAct,
    pub v: &'a CpuAct,
    pub g: &'a CpuAct,
    pub beta: &'a CpuAct,
}

/// [`gated_delta_net`] over a batch: each sequence's run with its state row.
pub(crate) fn gated_delta_net_batch(
    shape: DeltaNetShape,
    x: DeltaNetActs<'_>,
    state: &mut CpuAct,
    batch: &RecurrentBatch<'_>,
) -> Result<CpuAct, KernelError> {
    shape.check()?;
    op_checks::delta_net(
        shape,
        [x.q, x.k, x.v, x.g, x.beta].map(|a| (a.rows, a.cols)),
        state.cols,
    )?;
    let runs = batch.runs(x.q.rows, state.rows)?;
    let width = shape.n_v_heads * shape.head_dim;
    let mut out = vec![0f32; x.q.rows * width];
    let len = state.cols;
    for (slot, first, n) in runs {
        let input = DeltaNetInput {
            q: rows_of(x.q, first, n),
            k: rows_of(x.k, first, n),
            v: rows_of(x.v, first, n),
            g: rows_of(x.g, first, n),
            beta: rows_of(x.beta, first, n),
            n_tokens: n,
        };
        let st = &mut state.data[slot * len..(slot + 1) * len];
        let o = gated_delta_net(shape, input, st)?;
        out[first * width..(first + n) * width].copy_from_slice(&o);
    }
    Ok(CpuAct {
        data: out,
        rows: x.q.rows,
        cols: width,
    })
}

/// Rows `first .. first + n` of `a`.
fn rows_of(a: &CpuAct, first: usize, n: usize) -> &[f32] {
    &a.data[first * a.cols..(first + n) * a.cols]
}

fn check_len(op: &str, what: &str, len: usize, want: usize) -> Result<(), KernelError> {
    if len == want {
        Ok(())
    } else {
        Err(invalid(format!(
            "{op}: {what} has {len} values, expected {want}"
        )))
    }
}

fn invalid(msg: impl Into<String>) -> KernelError {
    KernelError::Invalid(msg.into())
}

#[cfg(test)]
mod tests;
