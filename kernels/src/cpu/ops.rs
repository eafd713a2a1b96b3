//! Element-wise and per-row ops: RMSNorm, RoPE, gated activations.
//!
//! Small calls (a decode step's) run on the calling thread: handing a few
//! microseconds of work to rayon's pool (wake a worker, park the caller)
//! costs more than the work.

use std::sync::OnceLock;

use half::f16;
use rayon::prelude::*;
use strata_model::arch::{Activation, RopeStyle};

use super::CpuAct;
use crate::backend::RopeConfig;

/// Activations up to this many values are processed on the calling thread.
pub const SERIAL_MAX_VALUES: usize = 1 << 14;

/// RMSNorm over groups of `w.len()` values: rows, or heads within rows.
pub fn rms_norm(x: &CpuAct, w: &[f32], eps: f32) -> CpuAct {
    let n = w.len();
    assert_eq!(
        x.cols % n,
        0,
        "rms_norm: row of {} is not a multiple of {n}",
        x.cols
    );
    let mut out = x.clone();
    // Enough groups per task to amortise rayon's overhead.
    let per_task = n * (4096 / n).max(1);
    let norm = |chunk: &mut [f32]| {
        for g in chunk.chunks_mut(n) {
            let ss: f32 = g.iter().map(|v| v * v).sum::<f32>() / n as f32;
            let s = 1.0 / (ss + eps).sqrt();
            g.iter_mut().zip(w).for_each(|(v, w)| *v = *v * s * w);
        }
    };
    if out.data.len() <= SERIAL_MAX_VALUES {
        norm(&mut out.data);
    } else {
        out.data.par_chunks_mut(per_task).for_each(norm);
    }
    out
}

/// ggml's RoPE without YaRN: theta_i = pos * scale * base^(-2i/dims) / factor_i.
pub fn rope(x: &mut CpuAct, positions: &[u32], cfg: &RopeConfig, freq_factors: Option<&[f32]>) {
    let half = cfg.dims / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| {
            let f = cfg.freq_base.powf(-2.0 * i as f32 / cfg.dims as f32);
            f / freq_factors.map_or(1.0, |ff| ff[i])
        })
        .collect();
    let cols = x.cols;
    let rotate = |(row, &pos): (&mut [f32], &u32)| {
        let p = pos as f32 * cfg.freq_scale;
        let cs: Vec<(f32, f32)> = inv_freq
            .iter()
            .map(|f| (p * f).sin_cos())
            .map(|(s, c)| (c, s))
            .collect();
        for head in row.chunks_mut(cfg.head_dim) {
            match cfg.style {
                RopeStyle::Normal => {
                    for (i, &(c, s)) in cs.iter().enumerate() {
                        let (a, b) = (head[2 * i], head[2 * i + 1]);
                        head[2 * i] = a * c - b * s;
                        head[2 * i + 1] = a * s + b * c;
                    }
                }
                RopeStyle::Neox => {
                    for (i, &(c, s)) in cs.iter().enumerate() {
                        let (a, b) = (head[i], head[i + half]);
                        head[i] = a * c - b * s;
                        head[i + half] = a * s + b * c;
                    }
                }
            }
        }
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

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x)).tanh())
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

pub fn gated(gate: &CpuAct, up: &CpuAct, act: Activation) -> CpuAct {
    let f = match act {
        Activation::Silu => silu,
        Activation::GeluTanh => gelu_tanh_f16,
    };
    let data = if gate.data.len() <= SERIAL_MAX_VALUES {
        gate.data
            .iter()
            .zip(&up.data)
            .map(|(&g, &u)| f(g) * u)
            .collect()
    } else {
        gate.data
            .par_iter()
            .zip(&up.data)
            .map(|(&g, &u)| f(g) * u)
            .collect()
    };
    CpuAct {
        data,
        rows: gate.rows,
        cols: gate.cols,
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::{gelu_tanh, gelu_tanh_f16};

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
