//! Attention over a q8_0 or q4_0 KV cache, in ggml-cpu's arithmetic.
//!
//! For quantized K/V llama.cpp's CPU flash attention always takes the
//! one-chunk vector path (`ggml_compute_forward_flash_attn_ext_f16_one_chunk`;
//! its tiled and split-KV paths are for f16/f32 K/V only), so every
//! context gives ggml's bits:
//! - K and V rows are stored with the CPU `from_float` of their type, as
//!   `set_rows` writes them: the x86 `quantize_row_q8_0` (the activation
//!   quantizer of [`dot`]) and `quantize_row_q4_0_ref`;
//! - each (token, head)'s Q is quantized to q8_0 (the K type's
//!   `vec_dot_type`), and a score is `vec_dot_q8_0_q8_0` /
//!   `vec_dot_q4_0_q8_0` of the K row's head slice with it, times the scale;
//! - the online softmax keeps an f32 accumulator: a new maximum scales it
//!   (`ggml_vec_scale_f32`), each V row is dequantized to f32 and added with
//!   one FMA per value (`ggml_vec_mad_f32`), and `S = S*ms + vs` is fused;
//! - a sink joins after the pass, then the accumulator is scaled by `1/S`.
//!
//! Like llama.cpp (`attn_rot_k/v`, llama-kv-cache.cpp), a quantized cache
//! holds K and V rotated by an orthonormal Walsh-Hadamard transform, which
//! spreads outliers over a block before quantization: with heads of a
//! multiple of 64 values, K and Q in chunks of the largest power of two
//! dividing the head (from 64), V and the attention output in chunks of
//! 64 (the transform is its own inverse), each as ggml-cpu's
//! `ggml_compute_forward_fwht` computes it ([`fwht`]).

use strata_model::quant::legacy::quantize_q4_0;
use strata_model::GgmlType;

use super::attention::{finish_softmax, for_each_head, slot, try_zeroed};
use super::{dot, CpuAct};
use crate::backend::{AttentionBatch, KernelError};
use crate::kv::{KvGeometry, KV_BLOCK_TOKENS};

/// Values per q8_0 / q4_0 block.
const QK: usize = 32;

/// Quantized K and V pools of every layer: `[layer][slot][row bytes]`.
pub(super) struct QuantKv {
    ty: GgmlType,
    k: Vec<Vec<u8>>,
    v: Vec<Vec<u8>>,
    /// Bytes of one slot's K (V) row.
    k_row: usize,
    v_row: usize,
    /// Hadamard chunk of K and Q, and of V and the output, when rotated.
    rot_k: Option<usize>,
    rot_v: Option<usize>,
}

impl QuantKv {
    /// The K and V byte pools of `layer`.
    pub fn pools(&self, layer: usize) -> (&[u8], &[u8]) {
        (&self.k[layer], &self.v[layer])
    }
    pub fn pools_mut(&mut self, layer: usize) -> (&mut [u8], &mut [u8]) {
        (&mut self.k[layer], &mut self.v[layer])
    }

    /// Pools for `geo` (whose `kv_type` is q8_0 or q4_0): heads of a whole
    /// number of 32-value blocks, as llama.cpp also requires.
    pub fn new(geo: &KvGeometry) -> Result<Self, KernelError> {
        let ty = geo.kv_type.ggml_type();
        if !matches!(ty, GgmlType::Q8_0 | GgmlType::Q4_0) {
            return Err(KernelError::Invalid(format!(
                "quantized KV cache of type {}",
                geo.kv_type.name()
            )));
        }
        geo.check_kv_type().map_err(KernelError::Invalid)?;
        let k_row = geo.kv_type.bytes_for(geo.k_dim());
        let v_row = geo.kv_type.bytes_for(geo.v_dim());
        let slots = geo.n_blocks * KV_BLOCK_TOKENS;
        let mut k = Vec::new();
        let mut v = Vec::new();
        for _ in 0..geo.n_layers {
            k.push(try_zeroed(slots * k_row, geo.pool_bytes())?);
            v.push(try_zeroed(slots * v_row, geo.pool_bytes())?);
        }
        let (rot_k, rot_v) = geo.hadamard_chunks();
        Ok(QuantKv {
            ty,
            k,
            v,
            k_row,
            v_row,
            rot_k,
            rot_v,
        })
    }

    pub fn write(&mut self, layer: usize, k: &CpuAct, v: &CpuAct, batch: &AttentionBatch<'_>) {
        let mut buf = Vec::new();
        for t in 0..k.rows {
            let s = slot(
                batch,
                batch.token_seq[t] as usize,
                batch.positions[t] as usize,
            );
            let kd = &mut self.k[layer][s * self.k_row..(s + 1) * self.k_row];
            store_row(self.ty, k.row(t), self.rot_k, &mut buf, kd);
            let vd = &mut self.v[layer][s * self.v_row..(s + 1) * self.v_row];
            store_row(self.ty, v.row(t), self.rot_v, &mut buf, vd);
        }
    }

    pub fn attend(
        &self,
        g: &KvGeometry,
        layer: usize,
        q: &CpuAct,
        batch: &AttentionBatch<'_>,
    ) -> CpuAct {
        let (hd, hdv) = (g.head_dim_k, g.head_dim_v);
        let q_bytes = dot::activation_row_bytes(self.ty, hd);
        let n_out = batch.n_heads * hdv;
        if let Some(sinks) = batch.sinks {
            assert!(
                sinks.len() >= batch.n_heads,
                "attention: {} sink logits for {} heads",
                sinks.len(),
                batch.n_heads
            );
        }
        let (q_scale, score_scale) = if batch.scale_query {
            (batch.scale, 1.0)
        } else {
            (1.0, batch.scale)
        };
        let mut out = vec![0f32; q.rows * n_out];
        let pass = HeadPass {
            kv: self,
            g,
            layer,
            q,
            batch,
            q_scale,
            score_scale,
        };
        let head = |sc: &mut Scratch, (i, o): (usize, &mut [f32])| pass.run(sc, i, o);
        let scratch = || Scratch {
            q: vec![0f32; hd],
            q_q: vec![0u8; q_bytes],
            v: vec![0f32; hdv],
        };
        for_each_head(&mut out, hdv, batch, q.rows, hd, scratch, head);
        CpuAct {
            data: out,
            rows: q.rows,
            cols: n_out,
        }
    }
}

/// One (token, head)'s pass over its positions (see the module comment).
struct HeadPass<'a> {
    kv: &'a QuantKv,
    g: &'a KvGeometry,
    layer: usize,
    q: &'a CpuAct,
    batch: &'a AttentionBatch<'a>,
    q_scale: f32,
    score_scale: f32,
}

impl HeadPass<'_> {
    /// Row `i` (token `i / n_heads`, head `i % n_heads`) of the output.
    ///
    /// A function of its own with FMA enabled, not a closure under
    /// `fused`: the closure was not inlined there, and its `mul_add`s
    /// became calls to `fmaf` (43% of an 8K-token prompt's time).
    fn run(&self, sc: &mut Scratch, i: usize, o: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if dot::fma_detected() {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn with_fma(pass: &HeadPass<'_>, sc: &mut Scratch, i: usize, o: &mut [f32]) {
                pass.body(sc, i, o)
            }
            // SAFETY: the features were detected.
            return unsafe { with_fma(self, sc, i, o) };
        }
        self.body(sc, i, o)
    }

    #[inline(always)]
    fn body(&self, sc: &mut Scratch, i: usize, o: &mut [f32]) {
        let (kv, g, batch) = (self.kv, self.g, self.batch);
        let (hd, hdv) = (g.head_dim_k, g.head_dim_v);
        let ty = kv.ty;
        let (k_head, v_head) = (g.kv_type.bytes_for(hd), g.kv_type.bytes_for(hdv));
        let (kpool, vpool) = (&kv.k[self.layer], &kv.v[self.layer]);
        let (t, h) = (i / batch.n_heads, i % batch.n_heads);
        let kvh = h / (batch.n_heads / g.n_kv_heads);
        let seq = batch.token_seq[t] as usize;
        let pos = batch.positions[t] as usize;
        let lo = batch.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        sc.q.iter_mut()
            .zip(&self.q.row(t)[h * hd..(h + 1) * hd])
            .for_each(|(d, &v)| *d = v * self.q_scale);
        if let Some(n) = kv.rot_k {
            fwht(&mut sc.q, n);
        }
        dot::quantize_activation_into(ty, &sc.q, &mut sc.q_q);
        o.fill(0.0);
        let (mut m, mut sum) = (f32::NEG_INFINITY, 0.0f32);
        for p in lo..=pos {
            let s = slot(batch, seq, p);
            let k0 = s * kv.k_row + kvh * k_head;
            let score = dot::vec_dot(ty, hd, &kpool[k0..k0 + k_head], &sc.q_q);
            let score = score * self.score_scale;
            let (mut ms, mut vs) = (1.0f32, 1.0f32);
            if score > m {
                ms = (m - score).exp();
                m = score;
                o.iter_mut().for_each(|a| *a *= ms);
            } else {
                vs = (score - m).exp();
            }
            let v0 = s * kv.v_row + kvh * v_head;
            dequantize(ty, &vpool[v0..v0 + v_head], &mut sc.v);
            o.iter_mut()
                .zip(&sc.v)
                .for_each(|(a, &x)| *a = x.mul_add(vs, *a));
            sum = sum.mul_add(ms, vs);
        }
        finish_softmax(o, m, sum, batch.sinks.map(|s| s[h]));
        if let Some(n) = kv.rot_v {
            fwht(o, n);
        }
    }
}

/// Per-thread buffers of one (token, head): Q scaled, Q as q8_0, a V row.
struct Scratch {
    q: Vec<f32>,
    q_q: Vec<u8>,
    v: Vec<f32>,
}

/// ggml-cpu's `ggml_compute_forward_fwht` on each chunk of `n` values (`n`
/// a power of two): scaled by `1/sqrt(n)` first, then the butterflies
/// (`u + v`, `u - v`: exact order-free steps, whatever SIMD width ggml
/// uses).
pub(super) fn fwht(x: &mut [f32], n: usize) {
    let scale = 1.0f32 / (n as f32).sqrt();
    for c in x.chunks_exact_mut(n) {
        c.iter_mut().for_each(|v| *v *= scale);
        let mut len = 1;
        while len < n {
            for i in (0..n).step_by(2 * len) {
                for j in i..i + len {
                    let (u, v) = (c[j], c[j + len]);
                    c[j] = u + v;
                    c[j + len] = u - v;
                }
            }
            len <<= 1;
        }
    }
}

/// `x` rotated (when `rot` is a chunk) and quantized into `dst`; `buf`
/// holds the rotated copy.
fn store_row(ty: GgmlType, x: &[f32], rot: Option<usize>, buf: &mut Vec<f32>, dst: &mut [u8]) {
    buf.clear();
    buf.extend_from_slice(x);
    if let Some(n) = rot {
        fwht(buf, n);
    }
    quantize_row(ty, buf, dst);
}

/// One row as ggml-cpu's `from_float` for `ty` writes it (`set_rows`).
fn quantize_row(ty: GgmlType, x: &[f32], dst: &mut [u8]) {
    match ty {
        // The x86 `quantize_row_q8_0`: the activation quantizer.
        GgmlType::Q8_0 => dot::quantize_activation_into(GgmlType::Q8_0, x, dst),
        // `quantize_row_q4_0` is `quantize_row_q4_0_ref`.
        _ => x
            .chunks_exact(QK)
            .zip(dst.chunks_exact_mut(ty.block_bytes()))
            .for_each(|(x, b)| quantize_q4_0(x, b)),
    }
}

/// `dequantize_row_q8_0` / `_q4_0` (exact: a small integer times an f16),
/// here rather than `strata_model`'s so that it is inlined into the FMA
/// pass: called per cached position, it was a fifth of a long prompt's time.
#[inline(always)]
fn dequantize(ty: GgmlType, src: &[u8], y: &mut [f32]) {
    let bytes = ty.block_bytes();
    for (b, y) in src.chunks_exact(bytes).zip(y.chunks_exact_mut(QK)) {
        let d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        if ty == GgmlType::Q8_0 {
            for (y, &q) in y.iter_mut().zip(&b[2..2 + QK]) {
                *y = q as i8 as f32 * d;
            }
        } else {
            let (lo, hi) = y.split_at_mut(QK / 2);
            for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&b[2..2 + QK / 2]) {
                *l = ((q & 0xF) as i32 - 8) as f32 * d;
                *h = ((q >> 4) as i32 - 8) as f32 * d;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use strata_model::profile::KvType;

    use super::*;
    use crate::cpu::CpuKvCache;

    fn geometry(kv_type: KvType, head_dim: usize) -> KvGeometry {
        KvGeometry {
            n_layers: 2,
            n_kv_heads: 2,
            head_dim_k: head_dim,
            head_dim_v: head_dim,
            kv_type,
            n_blocks: 3,
        }
    }

    #[test]
    fn refuses_heads_of_partial_blocks() {
        for ty in [KvType::Q8_0, KvType::Q4_0] {
            let err = CpuKvCache::new(geometry(ty, 40)).err().expect("refused");
            assert!(err.to_string().contains("multiple of 32"), "{err}");
        }
    }

    /// The orthonormal Hadamard transform is its own inverse, and matches
    /// the matrix llama.cpp builds (`ggml_gen_hadamard`) on a basis vector.
    #[test]
    fn fwht_is_its_own_inverse() {
        let x: Vec<f32> = (0..128)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let mut y = x.clone();
        fwht(&mut y, 64);
        fwht(&mut y, 64);
        x.iter()
            .zip(&y)
            .for_each(|(a, b)| assert!((a - b).abs() < 1e-5, "{a} vs {b}"));
        let mut e = vec![0f32; 64];
        e[3] = 1.0;
        fwht(&mut e, 64);
        // Row 3 of H: (-1)^popcount(3 & j) / 8.
        for (j, v) in e.iter().enumerate() {
            let sign = if (3 & j).count_ones() % 2 == 0 {
                1.0
            } else {
                -1.0
            };
            assert_eq!(*v, sign / 8.0, "column {j}");
        }
        let g = |hd| geometry(KvType::Q8_0, hd).hadamard_chunks();
        assert_eq!(g(64), (Some(64), Some(64)));
        assert_eq!(g(256), (Some(256), Some(64)));
        assert_eq!(g(192), (Some(64), Some(64)));
        assert_eq!(g(96), (None, None));
        assert_eq!(geometry(KvType::F16, 64).hadamard_chunks(), (None, None));
    }

    #[test]
    fn pools_hold_what_the_geometry_counts() {
        for ty in [KvType::Q8_0, KvType::Q4_0] {
            let g = geometry(ty, 64);
            let kv = QuantKv::new(&g).expect("cache");
            let held: usize = kv.k.iter().chain(&kv.v).map(Vec::len).sum();
            assert_eq!(held as u64, g.pool_bytes(), "{}", ty.name());
        }
    }

    /// Attention over quantized K/V stays near exact attention over the
    /// f32 values it was given (seeded inputs; the bound is the
    /// quantization's: q4_0 rows carry ~4 bits).
    #[test]
    fn close_to_exact_attention() {
        let mut state = 0x5EED_0015u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let (hd, n_heads, n_pos) = (64, 4, 40);
        for (ty, bound) in [(KvType::Q8_0, 0.01), (KvType::Q4_0, 0.12)] {
            let g = geometry(ty, hd);
            let mut cache = CpuKvCache::new(g).expect("cache");
            let act = |rows, cols, f: &mut dyn FnMut() -> f32| CpuAct {
                data: (0..rows * cols).map(|_| f()).collect(),
                rows,
                cols,
            };
            let k = act(n_pos, g.k_dim(), &mut next);
            let v = act(n_pos, g.v_dim(), &mut next);
            let q = act(n_pos, n_heads * hd, &mut || next() * 4.0);
            let positions: Vec<u32> = (0..n_pos as u32).collect();
            let token_seq = vec![0u32; n_pos];
            let table: Vec<u32> = vec![2, 0];
            let tables: [&[u32]; 1] = [&table];
            let batch = AttentionBatch {
                positions: &positions,
                token_seq: &token_seq,
                block_tables: &tables,
                n_heads,
                scale: 0.125,
                scale_query: false,
                window: Some(17),
                sinks: None,
                decode: &[],
                tiled: &[],
            };
            cache.write(1, &k, &v, &batch);
            let out = cache.attend(1, &q, &batch);
            let mut worst = 0f32;
            for t in 0..n_pos {
                for h in 0..n_heads {
                    let kvh = h / 2;
                    let lo = (t + 1).saturating_sub(17);
                    let qh = &q.row(t)[h * hd..(h + 1) * hd];
                    let scores: Vec<f64> = (lo..=t)
                        .map(|p| {
                            let kr = &k.row(p)[kvh * hd..(kvh + 1) * hd];
                            0.125 * qh.iter().zip(kr).map(|(a, b)| (a * b) as f64).sum::<f64>()
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                    let z: f64 = w.iter().sum();
                    for d in 0..hd {
                        let want: f64 = (lo..=t)
                            .zip(&w)
                            .map(|(p, w)| w * v.row(p)[kvh * hd + d] as f64)
                            .sum::<f64>()
                            / z;
                        let got = out.row(t)[h * hd + d] as f64;
                        worst = worst.max((want - got).abs() as f32);
                    }
                }
            }
            eprintln!("{}: worst |diff| {worst:.5}", ty.name());
            assert!(worst < bound, "{}: worst {worst} >= {bound}", ty.name());
        }
    }
}
