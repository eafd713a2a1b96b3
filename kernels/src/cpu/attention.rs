//! Attention over the paged KV cache, f16 K/V.

use half::f16;
use rayon::prelude::*;
use strata_model::profile::KvType;

use super::CpuAct;
use crate::backend::{AttentionBatch, KernelError};
use crate::kv::{KvGeometry, KV_BLOCK_TOKENS};

/// K and V pools of every layer of a stage: `[layer][block][slot][kv_dim]`.
pub struct CpuKvCache {
    geo: KvGeometry,
    k: Vec<Vec<f16>>,
    v: Vec<Vec<f16>>,
}

impl CpuKvCache {
    pub fn new(geo: KvGeometry) -> Result<Self, KernelError> {
        if geo.kv_type != KvType::F16 {
            return Err(KernelError::Invalid(format!("the CPU backend keeps KV as f16, not {}", geo.kv_type.name())));
        }
        let k_len = geo.n_blocks * KV_BLOCK_TOKENS * geo.k_dim();
        let v_len = geo.n_blocks * KV_BLOCK_TOKENS * geo.v_dim();
        let mut k = Vec::new();
        let mut v = Vec::new();
        for _ in 0..geo.n_layers {
            k.push(try_zeroed(k_len, geo.pool_bytes())?);
            v.push(try_zeroed(v_len, geo.pool_bytes())?);
        }
        Ok(CpuKvCache { geo, k, v })
    }

    pub fn geometry(&self) -> &KvGeometry {
        &self.geo
    }

    fn slot(batch: &AttentionBatch<'_>, seq: usize, pos: usize) -> usize {
        batch.block_tables[seq][pos / KV_BLOCK_TOKENS] as usize * KV_BLOCK_TOKENS + pos % KV_BLOCK_TOKENS
    }

    pub fn write(&mut self, layer: usize, k: &CpuAct, v: &CpuAct, batch: &AttentionBatch<'_>) {
        let (kd, vd) = (self.geo.k_dim(), self.geo.v_dim());
        for t in 0..k.rows {
            let slot = Self::slot(batch, batch.token_seq[t] as usize, batch.positions[t] as usize);
            let kd_dst = &mut self.k[layer][slot * kd..(slot + 1) * kd];
            kd_dst.iter_mut().zip(k.row(t)).for_each(|(d, s)| *d = f16::from_f32(*s));
            let vd_dst = &mut self.v[layer][slot * vd..(slot + 1) * vd];
            vd_dst.iter_mut().zip(v.row(t)).for_each(|(d, s)| *d = f16::from_f32(*s));
        }
    }

    /// Online-softmax attention with ggml's CPU flash-attention numerics:
    /// Q rounded to f16, Q.K in f32 over f16 values, and V accumulated in
    /// f16. Matching them keeps us on llama.cpp's numbers: Q8 activation
    /// quantization downstream turns any 1e-3 difference into a different
    /// rounding of many values.
    pub fn attend(&self, layer: usize, q: &CpuAct, batch: &AttentionBatch<'_>) -> CpuAct {
        let g = &self.geo;
        let (hd, hdv) = (g.head_dim_k, g.head_dim_v);
        let group = batch.n_heads / g.n_kv_heads;
        let (kd, vd) = (g.k_dim(), g.v_dim());
        let (kpool, vpool) = (&self.k[layer], &self.v[layer]);
        let n_out = batch.n_heads * hdv;
        let mut out = vec![0f32; q.rows * n_out];
        out.par_chunks_mut(hdv).enumerate().for_each(|(i, o)| {
            let (t, h) = (i / batch.n_heads, i % batch.n_heads);
            let kvh = h / group;
            let seq = batch.token_seq[t] as usize;
            let pos = batch.positions[t] as usize;
            let lo = batch.window.map_or(0, |w| (pos + 1).saturating_sub(w));
            let qh: Vec<f32> = q.row(t)[h * hd..(h + 1) * hd].iter().map(|&v| f16::from_f32(v).to_f32()).collect();
            let mut acc = vec![f16::ZERO; hdv];
            let (mut m, mut sum) = (f32::NEG_INFINITY, 0.0f32);
            for p in lo..=pos {
                let s = Self::slot(batch, seq, p);
                let kh = &kpool[s * kd + kvh * hd..s * kd + (kvh + 1) * hd];
                let score = qh.iter().zip(kh).map(|(a, b)| a * b.to_f32()).sum::<f32>() * batch.scale;
                let (mut ms, mut vs) = (1.0f32, 1.0f32);
                if score > m {
                    ms = (m - score).exp();
                    m = score;
                    acc.iter_mut().for_each(|a| *a = f16::from_f32(a.to_f32() * ms));
                } else {
                    vs = (score - m).exp();
                }
                let vh = &vpool[s * vd + kvh * hdv..s * vd + (kvh + 1) * hdv];
                acc.iter_mut().zip(vh).for_each(|(a, v)| *a = f16::from_f32(v.to_f32().mul_add(vs, a.to_f32())));
                sum = sum * ms + vs;
            }
            let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
            o.iter_mut().zip(&acc).for_each(|(o, a)| *o = a.to_f32() * inv);
        });
        CpuAct { data: out, rows: q.rows, cols: n_out }
    }
}

fn try_zeroed(len: usize, pool_bytes: u64) -> Result<Vec<f16>, KernelError> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| KernelError::OutOfMemory {
        backend: "cpu".into(),
        bytes: pool_bytes,
        what: "KV cache".into(),
    })?;
    v.resize(len, f16::ZERO);
    Ok(v)
}
