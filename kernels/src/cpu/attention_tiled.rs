//! Flash attention's tiled path over f16 K/V, in ggml-cpu's order
//! (`ggml_compute_forward_flash_attn_ext_tiled`, ops.cpp), which ggml takes
//! for a ubatch of 64+ query rows: Q in f32 (not rounded to f16), the keys
//! in tiles of 64 cells from cell 0, each score an FMA chain over the head
//! (`simd_gemm`: one lane per key), a tile's softmax through
//! `ggml_vec_soft_max_f32` (ggml's `ggml_v_expf`, 16 lanes summed by
//! `_mm512_reduce_add_ps` into a double) and V summed in f32 (an FMA chain
//! over the tile's keys per value). The one-chunk path sums V in f16, so
//! the two part by more than rounding at long context.
//!
//! Every row's result depends only on its own query, its position, the
//! cache and a sliding window's mask, not on the other rows of its tile:
//! each score and each value is its own chain. As ggml, a block of up to
//! 64 rows of one sequence and one head converts each K and V tile once.
//! Which rows take this path is the batch's to say
//! (`AttentionBatch::tiled`).

use rayon::prelude::*;

use super::attention::{finish_softmax, F16Pass};
use super::f32_sums::reduce_add_16;
use super::ops::expf_ggml;
use super::CpuAct;
use crate::backend::AttentionBatch;

/// ggml's `GGML_FA_TILE_KV`: keys per tile.
const KV_TILE: usize = 64;
/// ggml's `GGML_FA_TILE_Q`: the batch rows from which ggml tiles, and the
/// rows that share a converted tile.
const Q_TILE: usize = 64;

/// Which of the batch's `rows` tokens take the tiled path: those the batch
/// marks (`AttentionBatch::tiled`), unless fed back as decode steps.
pub(super) fn tiled_rows(batch: &AttentionBatch<'_>, rows: usize) -> Vec<bool> {
    (0..rows)
        .map(|t| {
            batch.tiled.get(t).copied().unwrap_or(false)
                && !batch.decode.get(t).copied().unwrap_or(false)
        })
        .collect()
}

/// Runs the tiled rows of `out` (`rows x n_heads*hdv`): blocks of up to 64
/// consecutive tiled rows of one sequence, per head, on the pool.
pub(super) fn attend_tiled(pass: &F16Pass<'_>, q: &CpuAct, tiled: &[bool], out: &mut [f32]) {
    let batch = pass.batch;
    let (_, hdv) = pass.head_dims();
    let n_out = batch.n_heads * hdv;
    let mut blocks: Vec<(usize, usize)> = Vec::new();
    let mut t = 0;
    while t < tiled.len() {
        if !tiled[t] {
            t += 1;
            continue;
        }
        let start = t;
        while t < tiled.len()
            && tiled[t]
            && t - start < Q_TILE
            && batch.token_seq[t] == batch.token_seq[start]
        {
            t += 1;
        }
        blocks.push((start, t));
    }
    let units: Vec<(usize, usize, usize)> = blocks
        .iter()
        .flat_map(|&(a, b)| (0..batch.n_heads).map(move |h| (a, b, h)))
        .collect();
    let results: Vec<Vec<f32>> = units
        .par_iter()
        .map(|&(a, b, h)| pass.tiled_block(q, a..b, h))
        .collect();
    for (&(a, b, h), r) in units.iter().zip(results) {
        for (t, o) in (a..b).zip(r.chunks_exact(hdv)) {
            out[t * n_out + h * hdv..t * n_out + (h + 1) * hdv].copy_from_slice(o);
        }
    }
}

impl F16Pass<'_> {
    /// Head `h` of the batch rows `rows` (one sequence): `rows x hdv` values.
    fn tiled_block(&self, q: &CpuAct, rows: std::ops::Range<usize>, h: usize) -> Vec<f32> {
        #[cfg(target_arch = "x86_64")]
        if super::dot::fma_detected() {
            // SAFETY: the features were just detected.
            return unsafe { self.tiled_block_fma(q, rows, h) };
        }
        self.tiled_block_in(q, rows, h)
    }

    /// [`Self::tiled_block`] compiled with FMA and AVX2: the loops below
    /// are inlined here, so `mul_add` is one instruction, not a call.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tiled_block_fma(
        &self,
        q: &CpuAct,
        rows: std::ops::Range<usize>,
        h: usize,
    ) -> Vec<f32> {
        self.tiled_block_in(q, rows, h)
    }

    #[inline(always)]
    fn tiled_block_in(&self, q: &CpuAct, rows: std::ops::Range<usize>, h: usize) -> Vec<f32> {
        let batch = self.batch;
        let (hd, hdv) = self.head_dims();
        let kvh = self.kv_head(h);
        let (q_scale, score_scale) = self.scales();
        let n = rows.len();
        let t0 = rows.start;
        let pos: Vec<usize> = rows.clone().map(|t| batch.positions[t] as usize).collect();
        let qs: Vec<f32> = rows
            .clone()
            .flat_map(|t| q.row(t)[h * hd..(h + 1) * hd].iter().map(|&v| v * q_scale))
            .collect();
        let mut out = vec![0f32; n * hdv];
        let mut m = vec![f32::NEG_INFINITY; n];
        let mut sum = vec![0f32; n];
        let mut keys = vec![0f32; hd * KV_TILE];
        let mut values = vec![0f32; KV_TILE * hdv];
        // A sliding window masks the keys before each row's `lo`
        // (ggml's tiles still start at cell 0; a tile all masked for a
        // row changes nothing of it).
        let lo: Vec<usize> = pos
            .iter()
            .map(|&p| batch.window.map_or(0, |w| (p + 1).saturating_sub(w)))
            .collect();
        let first = lo.iter().copied().min().unwrap_or(0);
        let last = pos.iter().copied().max().unwrap_or(0);
        for tile in (first / KV_TILE * KV_TILE..=last).step_by(KV_TILE) {
            let cells = tile.max(first)..(tile + KV_TILE).min(last + 1);
            // K transposed (a lane per key) and V, converted once.
            for c in cells.clone() {
                let j = c - tile;
                for (d, k) in self.k_row(t0, kvh, c).iter().enumerate() {
                    keys[d * KV_TILE + j] = k.to_f32();
                }
                for (v, x) in values[j * hdv..(j + 1) * hdv]
                    .iter_mut()
                    .zip(self.v_row(t0, kvh, c))
                {
                    *v = x.to_f32();
                }
            }
            for r in 0..n {
                let live =
                    lo[r].max(tile) - tile..(pos[r] + 1).min(tile + KV_TILE).saturating_sub(tile);
                if live.is_empty() {
                    continue;
                }
                // Scores: one FMA chain over the head per key, from +0.
                let mut acc = [0f32; KV_TILE];
                for (d, &qd) in qs[r * hd..(r + 1) * hd].iter().enumerate() {
                    for (a, &k) in acc.iter_mut().zip(&keys[d * KV_TILE..(d + 1) * KV_TILE]) {
                        *a = qd.mul_add(k, *a);
                    }
                }
                let mut scores = [f32::NEG_INFINITY; KV_TILE];
                let mut tile_max = f32::NEG_INFINITY;
                for j in live.clone() {
                    scores[j] = acc[j] * score_scale;
                    tile_max = tile_max.max(scores[j]);
                }
                let new_max = m[r].max(tile_max);
                let o = &mut out[r * hdv..(r + 1) * hdv];
                if new_max > m[r] {
                    let ms = (m[r] - new_max).exp();
                    o.iter_mut().for_each(|v| *v *= ms);
                    sum[r] *= ms;
                }
                m[r] = new_max;
                // ggml_vec_soft_max_f32: masked keys give exactly 0.
                let mut tile_sum = 0f64;
                for lanes in scores.chunks_exact_mut(16) {
                    lanes.iter_mut().for_each(|x| *x = expf_ggml(*x - new_max));
                    tile_sum += reduce_add_16(lanes) as f64;
                }
                sum[r] = (sum[r] as f64 + tile_sum) as f32;
                // V: one FMA chain per value over the tile's keys (a
                // masked key adds an exact 0, so it is left out).
                for j in live {
                    let w = scores[j];
                    for (a, &v) in o.iter_mut().zip(&values[j * hdv..(j + 1) * hdv]) {
                        *a = w.mul_add(v, *a);
                    }
                }
            }
        }
        for (r, o) in out.chunks_exact_mut(hdv).enumerate() {
            finish_softmax(o, m[r], sum[r], batch.sinks.map(|s| s[h]));
        }
        out
    }
}

#[cfg(test)]
mod tests;
