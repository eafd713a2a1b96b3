//! Element-wise and per-row ops: RMSNorm, RoPE, gated activations.
//!
//! Small calls (a decode step's) run on the calling thread: handing a few
//! microseconds of work to rayon's pool (wake a worker, park the caller)
//! costs more than the work.

use std::sync::OnceLock;

use half::f16;
use rayon::prelude::*;
use strata_model::arch::{Activation, RopeStyle};

use super::{fused, CpuAct};
use crate::backend::RopeConfig;

/// Activations up to this many values are processed on the calling thread.
pub const SERIAL_MAX_VALUES: usize = 1 << 14;

/// RMSNorm over groups of `w.len()` values: rows, or heads within rows.
pub fn rms_norm(x: &CpuAct, w: &[f32], eps: f32) -> CpuAct {
    rms_norm_groups(x, w.len(), eps, Some(w))
}

/// RMSNorm over groups of `n` values, times `w` when given (ggml_rms_norm,
/// then ggml_mul).
pub fn rms_norm_groups(x: &CpuAct, n: usize, eps: f32, w: Option<&[f32]>) -> CpuAct {
    assert!(
        n > 0 && x.cols.is_multiple_of(n),
        "rms_norm: row of {} is not a multiple of {n}",
        x.cols
    );
    let mut out = x.clone();
    // Enough groups per task to amortise rayon's overhead.
    let per_task = n * (4096 / n).max(1);
    let norm = |chunk: &mut [f32]| {
        for g in chunk.chunks_mut(n) {
            // As ggml: f32 squares summed in f64, the mean rounded to f32.
            let ss: f64 = g.iter().map(|v| (v * v) as f64).sum();
            let mean = (ss / n as f64) as f32;
            let s = 1.0 / (mean + eps).sqrt();
            match w {
                Some(w) => g.iter_mut().zip(w).for_each(|(v, w)| *v = *v * s * w),
                None => g.iter_mut().for_each(|v| *v *= s),
            }
        }
    };
    if out.data.len() <= SERIAL_MAX_VALUES {
        norm(&mut out.data);
    } else {
        out.data.par_chunks_mut(per_task).for_each(norm);
    }
    out
}

/// ggml's RoPE (`ggml_compute_forward_rope_f32`), in its arithmetic:
/// theta_i = pos * base^(-2/dims)^i built up by repeated multiplication,
/// divided by the frequency factor and scaled (with YaRN, `rope_yarn`'s
/// ramp and mscale); the rotation as GCC contracts it (one fused
/// multiply-add per output).
pub fn rope(x: &mut CpuAct, positions: &[u32], cfg: &RopeConfig, freq_factors: Option<&[f32]>) {
    let half = cfg.dims / 2;
    let theta_scale = cfg.freq_base.powf(-2.0 / cfg.dims as f32);
    let yarn = cfg.yarn.map(|y| YarnTerms::new(&y, cfg));
    let cols = x.cols;
    let rotate = |(row, &pos): (&mut [f32], &u32)| {
        fused(|| {
            let mut theta = pos as f32;
            let cs: Vec<(f32, f32)> = (0..half)
                .map(|i| {
                    let ff = freq_factors.map_or(1.0, |ff| ff[i]);
                    let cs = match &yarn {
                        None => {
                            let t = cfg.freq_scale * (theta / ff);
                            (t.cos(), t.sin())
                        }
                        Some(y) => y.cos_sin(theta / ff, i, cfg.freq_scale),
                    };
                    theta *= theta_scale;
                    cs
                })
                .collect();
            let (stride, offset) = match cfg.style {
                RopeStyle::Normal => (2, 1),
                RopeStyle::Neox => (1, half),
            };
            for head in row.chunks_mut(cfg.head_dim) {
                for (i, &(c, s)) in cs.iter().enumerate() {
                    let (i0, i1) = (i * stride, i * stride + offset);
                    let (a, b) = (head[i0], head[i1]);
                    head[i0] = a.mul_add(c, -(b * s));
                    head[i1] = a.mul_add(s, b * c);
                }
            }
        })
    };
    if x.data.len() <= SERIAL_MAX_VALUES {
        x.data.chunks_mut(cols).zip(positions).for_each(rotate);
    } else {
        x.data
            .par_chunks_mut(cols)
            .zip(positions.par_iter())
            .for_each(rotate);
    }
}

/// What ggml's `rope_yarn` needs beyond theta, computed once per call.
struct YarnTerms {
    corr_dims: [f32; 2],
    ext_factor: f32,
    /// `attn_factor`, times `1 + 0.1 ln(1 / freq_scale)` when `ext_factor != 0`.
    mscale: f32,
}

impl YarnTerms {
    fn new(y: &crate::backend::Yarn, cfg: &RopeConfig) -> Self {
        YarnTerms {
            corr_dims: y.corr_dims(cfg.dims, cfg.freq_base),
            ext_factor: y.ext_factor,
            mscale: y.mscale(cfg.freq_scale),
        }
    }

    /// ggml's `rope_yarn` for pair `i` (its `i0 = 2i`), from the
    /// unscaled theta.
    #[inline(always)]
    fn cos_sin(&self, theta_extrap: f32, i: usize, freq_scale: f32) -> (f32, f32) {
        let theta_interp = freq_scale * theta_extrap;
        let mut theta = theta_interp;
        if self.ext_factor != 0.0 {
            let ramp_mix = yarn_ramp(self.corr_dims, i) * self.ext_factor;
            // `theta_interp * (1 - ramp_mix) + theta_extrap * ramp_mix`, the
            // first product fused as GCC contracts it.
            theta = theta_interp.mul_add(1.0 - ramp_mix, theta_extrap * ramp_mix);
        }
        (theta.cos() * self.mscale, theta.sin() * self.mscale)
    }
}

/// ggml's `rope_yarn_ramp(low, high, i0)`, with `i0 / 2 = i`: 1 below the
/// ramp, 0 above it.
#[inline(always)]
fn yarn_ramp([low, high]: [f32; 2], i: usize) -> f32 {
    let span = if 0.001f32 > high - low {
        0.001
    } else {
        high - low
    };
    let y = (i as f32 - low) / span;
    let y = if 0.0 > y { 0.0 } else { y };
    1.0 - if 1.0 < y { 1.0 } else { y }
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// SiLU as ggml's AVX-512 `ggml_v_silu` computes it, lane by lane: its
/// polynomial `exp` (within 1.5 ulp), then `x / (1 + exp(-x))`.
#[inline(always)]
pub fn silu_ggml(x: f32) -> f32 {
    x / (1.0 + expf_ggml(0.0 - x))
}

/// ggml's AVX-512 `ggml_v_expf` (after ARM's optimized routines) for one lane.
#[inline(always)]
pub(crate) fn expf_ggml(x: f32) -> f32 {
    let r = f32::from_bits(0x4b40_0000); // 0x1.8p23
    let z = x.mul_add(f32::from_bits(0x3fb8_aa3b), r); // log2(e)
    let n = z - r;
    let b = (-n).mul_add(
        f32::from_bits(0x35bf_be8e),                  // 0x1.7f7d1cp-20
        (-n).mul_add(f32::from_bits(0x3f31_7200), x), // 0x1.62e4p-1
    );
    let u = b * b;
    let j = (f32::from_bits(0x3c07_2010).mul_add(b, f32::from_bits(0x3d2b_9f17))) // 0x1.0e4020p-7, 0x1.573e2ep-5
        .mul_add(
            u,
            f32::from_bits(0x3e2a_af33).mul_add(b, f32::from_bits(0x3eff_fedb)), // 0x1.555e66p-3, 0x1.fffdb6p-2
        )
        .mul_add(u, f32::from_bits(0x3f7f_fff6).mul_add(b, 1.0)); // 0x1.ffffecp-1
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    scalef(j, n)
}

/// `j * 2^n` rounded once (`vscalefps` for integral `n`).
#[inline(always)]
fn scalef(j: f32, n: f32) -> f32 {
    let n = n as i32;
    if (-126..=127).contains(&n) {
        j * f32::from_bits(((n + 127) as u32) << 23)
    } else {
        (j as f64 * 2f64.powi(n)) as f32
    }
}

pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    // `1 + a*x*x` fused, as GCC compiles ggml's `ggml_gelu_f32`.
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (0.044_715 * x).mul_add(x, 1.0)).tanh())
}

/// GELU as ggml's CPU backend computes it: through a table indexed by the
/// f16 input, holding f16 outputs. Matching it keeps us on llama.cpp's
/// numbers; the rounding is far below the model's own quantization noise.
pub fn gelu_tanh_f16(x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        gelu_table()[f16::from_f32(x).to_bits() as usize].to_f32()
    }
}

/// `f16(gelu_tanh(x))` for every f16 bit pattern `x` (ggml's `ggml_table_gelu_f16`).
fn gelu_table() -> &'static [f16] {
    static TABLE: OnceLock<Vec<f16>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|b| f16::from_f32(gelu_tanh(f16::from_bits(b).to_f32())))
            .collect()
    })
}

/// gpt-oss's SwiGLU constants (llama.cpp's `LLM_FFN_SWIGLU_OAI_MOE`).
pub const SWIGLU_OAI_ALPHA: f32 = 1.702;
pub const SWIGLU_OAI_LIMIT: f32 = 7.0;

/// ggml's `ggml_compute_forward_swiglu_oai_f32` for one value: the gate
/// capped above (`std::min`), the up value clamped (`std::clamp`), glibc's
/// `expf`; no multiply-add to contract. NaN passes as in C++ (`std::min`
/// keeps its first argument unless the second is smaller).
#[inline(always)]
pub fn swiglu_oai(g: f32, u: f32) -> f32 {
    let (alpha, limit) = (SWIGLU_OAI_ALPHA, SWIGLU_OAI_LIMIT);
    let x = if limit < g { limit } else { g };
    let y = if u < -limit {
        -limit
    } else if limit < u {
        limit
    } else {
        u
    };
    let out_glu = x / (1.0 + (alpha * -x).exp());
    out_glu * (y + 1.0)
}

pub fn gated(gate: &CpuAct, up: &CpuAct, act: Activation) -> CpuAct {
    let cols = gate.cols;
    let mut data = vec![0f32; gate.data.len()];
    let row = |((o, g), u): ((&mut [f32], &[f32]), &[f32])| {
        fused(|| match act {
            Activation::Silu => swiglu_row(o, g, u),
            Activation::GeluTanh => o
                .iter_mut()
                .zip(g.iter().zip(u))
                .for_each(|(o, (&g, &u))| *o = gelu_tanh_f16(g) * u),
            Activation::SwigluOai => o
                .iter_mut()
                .zip(g.iter().zip(u))
                .for_each(|(o, (&g, &u))| *o = swiglu_oai(g, u)),
        })
    };
    let rows = data
        .chunks_mut(cols)
        .zip(gate.data.chunks(cols))
        .zip(up.data.chunks(cols));
    if gate.data.len() <= SERIAL_MAX_VALUES {
        rows.for_each(row);
    } else {
        data.par_chunks_mut(cols)
            .zip(gate.data.par_chunks(cols))
            .zip(up.data.par_chunks(cols))
            .for_each(row);
    }
    CpuAct {
        data,
        rows: gate.rows,
        cols,
    }
}

/// `silu(g) * u` over a row as ggml's `ggml_vec_swiglu_f32`: its vector
/// SiLU in 16-lane steps, its scalar `silu` for the rest.
#[inline(always)]
fn swiglu_row(out: &mut [f32], g: &[f32], u: &[f32]) {
    let simd = g.len() & !15;
    #[cfg(target_arch = "x86_64")]
    if super::dot::fma_detected() {
        // SAFETY: AVX2 and FMA detected.
        unsafe { simd::swiglu(&mut out[..simd], &g[..simd], &u[..simd]) };
    } else {
        swiglu_portable(&mut out[..simd], &g[..simd], &u[..simd]);
    }
    #[cfg(not(target_arch = "x86_64"))]
    swiglu_portable(&mut out[..simd], &g[..simd], &u[..simd]);
    for ((o, &g), &u) in out[simd..].iter_mut().zip(&g[simd..]).zip(&u[simd..]) {
        *o = silu(g) * u;
    }
}

#[inline(always)]
fn swiglu_portable(out: &mut [f32], g: &[f32], u: &[f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        *o = silu_ggml(g) * u;
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    /// [`super::silu_ggml`]`(g) * u`, 8 lanes at a time with the same
    /// operations (the power of two built from the exponent bits where
    /// `vscalefps` is exact that way; other chunks take the scalar path).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn swiglu(out: &mut [f32], g: &[f32], u: &[f32]) {
        let n8 = out.len().min(g.len()).min(u.len()) & !7;
        let c = |bits: u32| _mm256_set1_ps(f32::from_bits(bits));
        let r = c(0x4b40_0000);
        for i in (0..n8).step_by(8) {
            let x = _mm256_loadu_ps(g.as_ptr().add(i));
            let neg = _mm256_sub_ps(_mm256_setzero_ps(), x);
            let z = _mm256_fmadd_ps(neg, c(0x3fb8_aa3b), r);
            let n = _mm256_sub_ps(z, r);
            let b = _mm256_fnmadd_ps(n, c(0x35bf_be8e), _mm256_fnmadd_ps(n, c(0x3f31_7200), neg));
            let ni = _mm256_cvtps_epi32(n);
            let in_range = _mm256_and_si256(
                _mm256_cmpgt_epi32(ni, _mm256_set1_epi32(-127)),
                _mm256_cmpgt_epi32(_mm256_set1_epi32(128), ni),
            );
            if _mm256_movemask_epi8(in_range) != -1 {
                for k in i..i + 8 {
                    out[k] = super::silu_ggml(g[k]) * u[k];
                }
                continue;
            }
            let u2 = _mm256_mul_ps(b, b);
            let j = _mm256_fmadd_ps(
                _mm256_fmadd_ps(
                    _mm256_fmadd_ps(c(0x3c07_2010), b, c(0x3d2b_9f17)),
                    u2,
                    _mm256_fmadd_ps(c(0x3e2a_af33), b, c(0x3eff_fedb)),
                ),
                u2,
                _mm256_fmadd_ps(c(0x3f7f_fff6), b, _mm256_set1_ps(1.0)),
            );
            let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
                ni,
                _mm256_set1_epi32(127),
            )));
            let e = _mm256_mul_ps(j, pow2);
            let silu = _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e));
            _mm256_storeu_ps(
                out.as_mut_ptr().add(i),
                _mm256_mul_ps(silu, _mm256_loadu_ps(u.as_ptr().add(i))),
            );
        }
        super::swiglu_portable(&mut out[n8..], &g[n8..], &u[n8..]);
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::{gelu_tanh, gelu_tanh_f16};

    /// The AVX2 SwiGLU gives the scalar emulation of ggml's AVX-512 SiLU bit
    /// for bit, across magnitudes up to where exp under- and overflows.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_swiglu_matches_scalar_bits() {
        if !crate::cpu::dot::fma_detected() {
            return;
        }
        let mut state = 0x5111_u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        for scale in [1e-6f32, 0.01, 1.0, 10.0, 80.0, 100.0, 300.0] {
            let g: Vec<f32> = (0..1024).map(|_| next() * 2.0 * scale).collect();
            let u: Vec<f32> = (0..1024).map(|_| next()).collect();
            let mut got = vec![0f32; 1024];
            // SAFETY: features detected above.
            unsafe { super::simd::swiglu(&mut got, &g, &u) };
            for i in 0..1024 {
                let want = super::silu_ggml(g[i]) * u[i];
                assert_eq!(got[i].to_bits(), want.to_bits(), "g = {}", g[i]);
            }
        }
    }

    /// The table gives the directly computed f16 GELU for every f16 input in range.
    #[test]
    fn gelu_table_matches_direct_f16_gelu() {
        for b in 0..=u16::MAX {
            let x = f16::from_bits(b).to_f32();
            if !x.is_finite() || x <= -10.0 || x >= 10.0 {
                continue;
            }
            let direct = f16::from_f32(gelu_tanh(x)).to_f32();
            assert_eq!(gelu_tanh_f16(x).to_bits(), direct.to_bits(), "x = {x}");
        }
    }
}
