//! The CPU backend's paged KV cache, and attention over f16 K/V (q8_0 and
//! q4_0 K/V: `attention_quant.rs`; long decode steps: `attention_split.rs`).

use half::{f16, slice::HalfFloatSliceExt};
use rayon::prelude::*;
use strata_model::profile::KvType;

use super::attention_quant::QuantKv;
use super::attention_split::{attend_split, split_kv_chunk_tokens, SPLIT_KV_CHUNKS};
use super::attention_tiled::{attend_tiled, tiled_rows};
use super::{fused, CpuAct};
use crate::backend::{AttentionBatch, KernelError};
use crate::kv::{KvGeometry, KV_BLOCK_TOKENS};

/// Attention up to this many multiply-adds runs on the calling thread (a
/// short decode step: less work than handing it to the pool).
const SERIAL_MAX_MACS: usize = 1 << 16;

/// K and V pools of every layer of a stage: `[layer][block][slot][kv_dim]`,
/// as f16 values or as q8_0 / q4_0 blocks.
pub struct CpuKvCache {
    geo: KvGeometry,
    pools: Pools,
}

enum Pools {
    F16 { k: Vec<Vec<f16>>, v: Vec<Vec<f16>> },
    Quant(QuantKv),
}

/// The slot of a sequence's position: its block's, through the block table.
pub(super) fn slot(batch: &AttentionBatch<'_>, seq: usize, pos: usize) -> usize {
    batch.block_tables[seq][pos / KV_BLOCK_TOKENS] as usize * KV_BLOCK_TOKENS
        + pos % KV_BLOCK_TOKENS
}

impl CpuKvCache {
    pub fn new(geo: KvGeometry) -> Result<Self, KernelError> {
        if geo.kv_type != KvType::F16 {
            let pools = Pools::Quant(QuantKv::new(&geo)?);
            return Ok(CpuKvCache { geo, pools });
        }
        let k_len = geo.n_blocks * KV_BLOCK_TOKENS * geo.k_dim();
        let v_len = geo.n_blocks * KV_BLOCK_TOKENS * geo.v_dim();
        let mut k = Vec::new();
        let mut v = Vec::new();
        for _ in 0..geo.n_layers {
            k.push(try_zeroed(k_len, geo.pool_bytes())?);
            v.push(try_zeroed(v_len, geo.pool_bytes())?);
        }
        Ok(CpuKvCache {
            geo,
            pools: Pools::F16 { k, v },
        })
    }

    pub fn geometry(&self) -> &KvGeometry {
        &self.geo
    }

    /// One block of `layer`: its K rows then its V rows, as stored.
    pub fn block_to_bytes(&self, layer: usize, block: usize) -> Vec<u8> {
        let (kr, vr) = self.geo.row_bytes();
        let mut out = Vec::with_capacity(self.geo.block_bytes());
        let slots = block * KV_BLOCK_TOKENS..(block + 1) * KV_BLOCK_TOKENS;
        match &self.pools {
            Pools::F16 { k, v } => {
                let (kd, vd) = (self.geo.k_dim(), self.geo.v_dim());
                for (pool, d) in [(&k[layer], kd), (&v[layer], vd)] {
                    pool[slots.start * d..slots.end * d]
                        .iter()
                        .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
                }
            }
            Pools::Quant(q) => {
                let (k, v) = q.pools(layer);
                out.extend_from_slice(&k[slots.start * kr..slots.end * kr]);
                out.extend_from_slice(&v[slots.start * vr..slots.end * vr]);
            }
        }
        out
    }

    /// Writes back what [`Self::block_to_bytes`] gave (`bytes` is
    /// `geometry().block_bytes()` long).
    pub fn block_from_bytes(&mut self, layer: usize, block: usize, bytes: &[u8]) {
        let (kr, _) = self.geo.row_bytes();
        let slots = block * KV_BLOCK_TOKENS..(block + 1) * KV_BLOCK_TOKENS;
        let (kb, vb) = bytes.split_at(kr * KV_BLOCK_TOKENS);
        match &mut self.pools {
            Pools::F16 { k, v } => {
                let (kd, vd) = (self.geo.k_dim(), self.geo.v_dim());
                for (pool, d, src) in [(&mut k[layer], kd, kb), (&mut v[layer], vd, vb)] {
                    let dst = &mut pool[slots.start * d..slots.end * d];
                    for (x, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                        *x = f16::from_le_bytes([b[0], b[1]]);
                    }
                }
            }
            Pools::Quant(q) => {
                let (k, v) = q.pools_mut(layer);
                let vr = vb.len() / KV_BLOCK_TOKENS;
                k[slots.start * kr..slots.end * kr].copy_from_slice(kb);
                v[slots.start * vr..slots.end * vr].copy_from_slice(vb);
            }
        }
    }

    pub fn write(&mut self, layer: usize, k: &CpuAct, v: &CpuAct, batch: &AttentionBatch<'_>) {
        let (kd, vd) = (self.geo.k_dim(), self.geo.v_dim());
        let (kpool, vpool) = match &mut self.pools {
            Pools::F16 { k, v } => (k, v),
            Pools::Quant(qkv) => return qkv.write(layer, k, v, batch),
        };
        for t in 0..k.rows {
            let slot = slot(
                batch,
                batch.token_seq[t] as usize,
                batch.positions[t] as usize,
            );
            let kd_dst = &mut kpool[layer][slot * kd..(slot + 1) * kd];
            kd_dst.convert_from_f32_slice(k.row(t));
            let vd_dst = &mut vpool[layer][slot * vd..(slot + 1) * vd];
            vd_dst.convert_from_f32_slice(v.row(t));
        }
    }

    /// Online-softmax attention with ggml's CPU flash-attention numerics:
    /// Q rounded to f16, Q.K in f32 over f16 values, and V accumulated in
    /// f16. Matching them
    /// keeps us on llama.cpp's numbers: Q8 activation quantization
    /// downstream turns any 1e-3 difference into a different rounding of
    /// many values. A decode row (`AttentionBatch::decode`) over 512+ of
    /// ggml's cells takes its split-KV order (`attention_split.rs`), every
    /// other row its one-chunk order.
    pub fn attend(&self, layer: usize, q: &CpuAct, batch: &AttentionBatch<'_>) -> CpuAct {
        let g = &self.geo;
        let (kpool, vpool) = match &self.pools {
            Pools::F16 { k, v } => (&k[layer], &v[layer]),
            Pools::Quant(qkv) => return qkv.attend(g, layer, q, batch),
        };
        let (hd, hdv) = (g.head_dim_k, g.head_dim_v);
        let n_out = batch.n_heads * hdv;
        if let Some(sinks) = batch.sinks {
            assert!(
                sinks.len() >= batch.n_heads,
                "attention: {} sink logits for {} heads",
                sinks.len(),
                batch.n_heads
            );
        }
        let mut out = vec![0f32; q.rows * n_out];
        // The attention scale goes on Q (before its f16 rounding) or on the scores.
        let (q_scale, score_scale) = if batch.scale_query {
            (batch.scale, 1.0)
        } else {
            (1.0, batch.scale)
        };
        let pass = F16Pass {
            kpool,
            vpool,
            geo: g,
            batch,
            kernels: head_kernels(),
            q_scale,
            score_scale,
        };
        // Decode steps over 512+ cells take ggml's split-KV order, the
        // other rows its one-chunk order.
        let split: Vec<Option<usize>> = (0..q.rows)
            .map(|t| split_kv_chunk_tokens(t, batch, SPLIT_KV_CHUNKS))
            .collect();
        // Rows the batch marks (prompt rows of 64+ row ubatches) take
        // ggml's tiled order.
        let tiled = tiled_rows(batch, q.rows);
        let scratch = || (vec![0f32; hd], vec![f16::ZERO; hdv]);
        for_each_head(&mut out, hdv, batch, q.rows, hd, scratch, |s, (i, o)| {
            let t = i / batch.n_heads;
            if !tiled[t] && split[t].is_none() {
                pass.one_chunk_head(q, s, (i, o))
            }
        });
        if tiled.contains(&true) {
            attend_tiled(&pass, q, &tiled, &mut out);
        }
        for (t, chunk_tokens) in split.iter().enumerate() {
            if let Some(chunk_tokens) = *chunk_tokens {
                attend_split(
                    &pass,
                    q,
                    t,
                    chunk_tokens,
                    &mut out[t * n_out..(t + 1) * n_out],
                );
            }
        }
        CpuAct {
            data: out,
            rows: q.rows,
            cols: n_out,
        }
    }
}

/// The end of one head's online softmax over `o` (running max `m`, sum
/// `sum`): the sink logit joins it after the pass, on the f32 accumulator
/// (ggml_compute_forward_flash_attn_ext_f16_one_chunk), then `o /= sum`.
pub(super) fn finish_softmax(o: &mut [f32], mut m: f32, mut sum: f32, sink: Option<f32>) {
    if let Some(s) = sink {
        add_sink(o, &mut m, &mut sum, s);
    }
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    o.iter_mut().for_each(|o| *o *= inv);
}

/// A sink logit `s` joins the softmax state (`o`, `m`, `sum`) as ggml's
/// `one_chunk` adds it after its pass: a new maximum rescales `o`.
pub(super) fn add_sink(o: &mut [f32], m: &mut f32, sum: &mut f32, s: f32) {
    let (mut ms, mut vs) = (1.0f32, 1.0f32);
    if s > *m {
        ms = (*m - s).exp();
        *m = s;
        o.iter_mut().for_each(|o| *o *= ms);
    } else {
        vs = (s - *m).exp();
    }
    *sum = sum.mul_add(ms, vs);
}

/// One layer's f16 K/V and what a head's online-softmax pass over them
/// needs: the shared step of the one-chunk and split-KV paths.
pub(super) struct F16Pass<'a> {
    kpool: &'a [f16],
    vpool: &'a [f16],
    geo: &'a KvGeometry,
    pub(super) batch: &'a AttentionBatch<'a>,
    kernels: HeadKernels,
    q_scale: f32,
    score_scale: f32,
}

impl F16Pass<'_> {
    pub(super) fn head_dims(&self) -> (usize, usize) {
        (self.geo.head_dim_k, self.geo.head_dim_v)
    }

    /// The factor on Q and the factor on the scores (one of them 1).
    pub(super) fn scales(&self) -> (f32, f32) {
        (self.q_scale, self.score_scale)
    }

    /// Head `kvh` of K at position `pos` of token `t`'s sequence.
    pub(super) fn k_row(&self, t: usize, kvh: usize, pos: usize) -> &[f16] {
        let (hd, kd) = (self.geo.head_dim_k, self.geo.k_dim());
        let s = slot(self.batch, self.batch.token_seq[t] as usize, pos);
        &self.kpool[s * kd + kvh * hd..s * kd + (kvh + 1) * hd]
    }

    /// Head `kvh` of V at position `pos` of token `t`'s sequence.
    pub(super) fn v_row(&self, t: usize, kvh: usize, pos: usize) -> &[f16] {
        let (hdv, vd) = (self.geo.head_dim_v, self.geo.v_dim());
        let s = slot(self.batch, self.batch.token_seq[t] as usize, pos);
        &self.vpool[s * vd + kvh * hdv..s * vd + (kvh + 1) * hdv]
    }

    /// The KV head query head `h` reads.
    pub(super) fn kv_head(&self, h: usize) -> usize {
        h / (self.batch.n_heads / self.geo.n_kv_heads)
    }

    /// Output `i` (token `i / n_heads`, head `i % n_heads`) of the one-chunk
    /// path: the whole span in one pass, then sink and `1/S`.
    fn one_chunk_head(
        &self,
        q: &CpuAct,
        (qh, acc): &mut (Vec<f32>, Vec<f16>),
        (i, o): (usize, &mut [f32]),
    ) {
        fused(|| {
            let batch = self.batch;
            let (t, h) = (i / batch.n_heads, i % batch.n_heads);
            let pos = batch.positions[t] as usize;
            let lo = batch.window.map_or(0, |w| (pos + 1).saturating_sub(w));
            self.round_query(q, t, h, qh);
            let (m, sum) = self.run(qh, acc, t, self.kv_head(h), lo..pos + 1);
            acc.convert_to_f32_slice(o);
            finish_softmax(o, m, sum, batch.sinks.map(|s| s[h]));
        })
    }

    /// Query head `h` of token `t`, scaled if the scale goes on Q, rounded
    /// to f16 (kept as f32: f16 x f16 products are exact in f32).
    pub(super) fn round_query(&self, q: &CpuAct, t: usize, h: usize, qh: &mut [f32]) {
        let hd = self.geo.head_dim_k;
        qh.iter_mut()
            .zip(&q.row(t)[h * hd..(h + 1) * hd])
            .for_each(|(d, &v)| *d = f16::from_f32(v * self.q_scale).to_f32());
    }

    /// ggml's `one_chunk` loop for KV head `kvh` over `positions` of token
    /// `t`'s sequence: scores, `S = fma(S, ms, vs)`, V accumulated into the
    /// f16 `acc` (zeroed here). Returns the running max and sum.
    pub(super) fn run(
        &self,
        qh: &[f32],
        acc: &mut [f16],
        t: usize,
        kvh: usize,
        positions: std::ops::Range<usize>,
    ) -> (f32, f32) {
        let (batch, k) = (self.batch, &self.kernels);
        let (hd, hdv) = (self.geo.head_dim_k, self.geo.head_dim_v);
        let (kd, vd) = (self.geo.k_dim(), self.geo.v_dim());
        let seq = batch.token_seq[t] as usize;
        acc.fill(f16::ZERO);
        let (mut m, mut sum) = (f32::NEG_INFINITY, 0.0f32);
        let mut p0 = positions.start;
        while p0 < positions.end {
            // Scores of up to LANES positions at once (the last padded by repeating it).
            let n = (positions.end - p0).min(LANES);
            let slots: [usize; LANES] =
                std::array::from_fn(|j| slot(batch, seq, p0 + j.min(n - 1)));
            let rows = slots.map(|s| &self.kpool[s * kd + kvh * hd..s * kd + (kvh + 1) * hd]);
            let scores = (k.scores)(qh, rows);
            for (j, &s) in slots.iter().enumerate().take(n) {
                let score = scores[j] * self.score_scale;
                let (mut ms, mut vs) = (1.0f32, 1.0f32);
                if score > m {
                    ms = (m - score).exp();
                    m = score;
                    (k.scale)(acc, ms);
                } else {
                    vs = (score - m).exp();
                }
                let vh = &self.vpool[s * vd + kvh * hdv..s * vd + (kvh + 1) * hdv];
                (k.mad)(acc, vh, vs);
                // GCC fuses this in ggml (-ffp-contract=fast).
                sum = sum.mul_add(ms, vs);
            }
            p0 += n;
        }
        (m, sum)
    }
}

/// Runs `head` on every (token, query head) output of `hdv` values (index
/// `token * n_heads + head`), each with a scratch from `scratch`: on the
/// calling thread for a short decode step, else on the pool.
pub(super) fn for_each_head<S: Send>(
    out: &mut [f32],
    hdv: usize,
    batch: &AttentionBatch<'_>,
    rows: usize,
    hd: usize,
    scratch: impl Fn() -> S + Send + Sync,
    head: impl Fn(&mut S, (usize, &mut [f32])) + Send + Sync,
) {
    // Positions attended, summed over tokens (an upper bound with a window).
    let span: usize = batch.positions[..rows]
        .iter()
        .map(|&p| p as usize + 1)
        .sum();
    if span * batch.n_heads * (hd + hdv) <= SERIAL_MAX_MACS {
        let mut s = scratch();
        out.chunks_mut(hdv)
            .enumerate()
            .for_each(|io| head(&mut s, io));
    } else {
        out.par_chunks_mut(hdv)
            .enumerate()
            .for_each_init(scratch, head);
    }
}

/// Key positions scored at once.
const LANES: usize = 8;

/// `q . k` as ggml's AVX-512 `ggml_vec_dot_f16` sums it: 64-value chunks
/// accumulated into 4 x 16 f32 lanes, the four vectors added pairwise
/// ((0 + 2) + (1 + 3)), the 16 lanes reduced as GCC's
/// `_mm512_reduce_add_ps`, and the leftover products added in f64.
fn dot_f16_ggml(n: usize, q: impl Fn(usize) -> f32, k: impl Fn(usize) -> f32) -> f32 {
    let np = n & !63;
    let mut acc = [[0f32; 16]; 4];
    for c in (0..np).step_by(64) {
        for (j, a) in acc.iter_mut().enumerate() {
            for (l, a) in a.iter_mut().enumerate() {
                let i = c + 16 * j + l;
                *a += k(i) * q(i);
            }
        }
    }
    let v: [f32; 16] = std::array::from_fn(|l| (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]));
    let t3: [f32; 8] = std::array::from_fn(|i| v[i + 8] + v[i]);
    let t6: [f32; 4] = std::array::from_fn(|i| t3[i + 4] + t3[i]);
    let mut sum = ((t6[0] + t6[2]) + (t6[1] + t6[3])) as f64;
    for i in np..n {
        sum += (k(i) * q(i)) as f64;
    }
    sum as f32
}

/// The per-head vector kernels of [`CpuKvCache::attend`]; SIMD ones give
/// the same bits as the portable ones.
struct HeadKernels {
    /// Q.K for LANES key rows, each summed as [`dot_f16_ggml`].
    scores: fn(&[f32], [&[f16]; LANES]) -> [f32; LANES],
    /// acc = f16(acc * s)
    scale: fn(&mut [f16], f32),
    /// acc = f16(fma(v, s, acc))
    mad: fn(&mut [f16], &[f16], f32),
}

fn head_kernels() -> HeadKernels {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        // SAFETY (of the calls through these): the features were just detected.
        return HeadKernels {
            scores: |q, k| unsafe { simd::scores(q, k) },
            scale: |a, s| unsafe { simd::scale_f16(a, s) },
            mad: |a, v, s| unsafe { simd::mad_f16(a, v, s) },
        };
    }
    HeadKernels {
        scores: portable::scores,
        scale: portable::scale_f16,
        mad: portable::mad_f16,
    }
}

mod portable {
    use half::f16;

    use super::LANES;

    pub fn scores(q: &[f32], k: [&[f16]; LANES]) -> [f32; LANES] {
        k.map(|k| super::dot_f16_ggml(q.len(), |i| q[i], |i| k[i].to_f32()))
    }

    pub fn scale_f16(acc: &mut [f16], s: f32) {
        acc.iter_mut()
            .for_each(|a| *a = f16::from_f32(a.to_f32() * s));
    }

    pub fn mad_f16(acc: &mut [f16], v: &[f16], s: f32) {
        acc.iter_mut()
            .zip(v)
            .for_each(|(a, v)| *a = f16::from_f32(v.to_f32().mul_add(s, a.to_f32())));
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use half::f16;

    use super::LANES;

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn load8(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn store8(p: *mut f16, v: __m256) {
        _mm_storeu_si128(
            p as *mut __m128i,
            _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v),
        )
    }

    /// Each key row summed as [`super::dot_f16_ggml`]: 64-value chunks into
    /// 4 x 16 lanes (here 8 registers), then ggml's reduction tree.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scores(q: &[f32], k: [&[f16]; LANES]) -> [f32; LANES] {
        let n = q.len();
        if k.iter().any(|k| k.len() != n) {
            return super::portable::scores(q, k);
        }
        let np = n & !63;
        k.map(|k| {
            let mut acc = [_mm256_setzero_ps(); 8];
            for c in (0..np).step_by(64) {
                for (r, a) in acc.iter_mut().enumerate() {
                    let at = c + 8 * r;
                    let x = load8(k.as_ptr().add(at));
                    // The product of two f16 values is exact: mul + add == fma.
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(x, _mm256_loadu_ps(q.as_ptr().add(at))));
                }
            }
            // Registers 2j and 2j + 1 hold lanes 0-7 and 8-15 of ggml's sum[j].
            let lo = _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6]));
            let hi = _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]));
            let v: [f32; 8] = std::mem::transmute(_mm256_add_ps(hi, lo));
            let t6 = [v[4] + v[0], v[5] + v[1], v[6] + v[2], v[7] + v[3]];
            let mut sum = ((t6[0] + t6[2]) + (t6[1] + t6[3])) as f64;
            for i in np..n {
                sum += (k[i].to_f32() * q[i]) as f64;
            }
            sum as f32
        })
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scale_f16(acc: &mut [f16], s: f32) {
        let n8 = acc.len() & !7;
        let p = acc.as_mut_ptr();
        let vs = _mm256_set1_ps(s);
        for i in (0..n8).step_by(8) {
            store8(p.add(i), _mm256_mul_ps(load8(p.add(i)), vs));
        }
        super::portable::scale_f16(&mut acc[n8..], s);
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn mad_f16(acc: &mut [f16], v: &[f16], s: f32) {
        let n = acc.len().min(v.len());
        let n8 = n & !7;
        let (p, pv) = (acc.as_mut_ptr(), v.as_ptr());
        let vs = _mm256_set1_ps(s);
        for i in (0..n8).step_by(8) {
            store8(
                p.add(i),
                _mm256_fmadd_ps(load8(pv.add(i)), vs, load8(p.add(i))),
            );
        }
        super::portable::mad_f16(&mut acc[n8..n], &v[n8..n], s);
    }
}

/// A zeroed KV pool of `len` values, or an out-of-memory error naming the
/// whole cache's `pool_bytes` (f16 and quantized pools alike).
pub(super) fn try_zeroed<T: Clone + Default>(
    len: usize,
    pool_bytes: u64,
) -> Result<Vec<T>, KernelError> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| KernelError::OutOfMemory {
            backend: "cpu".into(),
            bytes: pool_bytes,
            what: "KV cache".into(),
        })?;
    v.resize(len, T::default());
    Ok(v)
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use half::f16;

    use super::{portable, simd};

    /// The SIMD head kernels give the portable kernels' bits (seeded inputs).
    #[test]
    fn simd_head_kernels_match_portable_bits() {
        if !(is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
        {
            return;
        }
        let mut state = 0x5EED_2026u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0
        };
        for n in [8, 32, 40, 64, 72, 128, 256] {
            let a: Vec<f16> = (0..n).map(|_| f16::from_f32(next())).collect();
            let b: Vec<f16> = (0..n).map(|_| f16::from_f32(next())).collect();
            let s = next();
            let q: Vec<f32> = a.iter().map(|v| v.to_f32()).collect();
            let rows: Vec<Vec<f16>> = (0..super::LANES)
                .map(|_| (0..n).map(|_| f16::from_f32(next())).collect())
                .collect();
            let k: [&[f16]; super::LANES] = std::array::from_fn(|j| &rows[j][..]);
            // SAFETY: features detected above.
            unsafe {
                let (want, got) = (portable::scores(&q, k), simd::scores(&q, k));
                assert_eq!(
                    want.map(f32::to_bits),
                    got.map(f32::to_bits),
                    "scores n={n}"
                );
                let (mut x, mut y) = (a.clone(), a.clone());
                portable::scale_f16(&mut x, s);
                simd::scale_f16(&mut y, s);
                assert_eq!(x, y, "scale n={n}");
                portable::mad_f16(&mut x, &b, s);
                simd::mad_f16(&mut y, &b, s);
                assert_eq!(x, y, "mad n={n}");
            }
        }
    }
}
