//! MXFP4 weights against Q8_0 activations (ggml's `vec_dot_type` for
//! MXFP4), portable and AVX2.
//!
//! The order is the kernel llama.cpp's x86 build actually runs: it repacks
//! MXFP4 matrices whose row count is a multiple of 8 (gpt-oss's experts
//! are) and multiplies them with `ggml_gemv_mxfp4_8x8_q8_0` (`mul_mat_id`
//! always, `mul_mat` for 1-3 tokens) or `ggml_gemm_mxfp4_8x8_q8_0` (4+
//! tokens), both `gemv/gemm_q4_b32_8x8_q8_0_lut_avx` in
//! ggml-cpu/arch/x86/repack.cpp. Per output, block after block:
//! `acc = fma(sumi, e8m0_half(e) * d_y, acc)` with `sumi` the block's exact
//! integer dot: one f32 accumulator, one FMA per 32 elements, the same in
//! the gemv and the gemm. (Unrepacked matrices, row count not a multiple
//! of 8, take `ggml_vec_dot_mxfp4_q8_0`'s 8-lane order in llama.cpp; ours
//! keep the repacked order, as for Q4_K and Q2_K.)
//!
//! The scalar kernel does the same operations (`f32::mul_add`), so every
//! kernel here gives the same bits.

use strata_model::quant::mxfp4::{e8m0_to_f32_half, BLOCK_BYTES, KVALUES};

/// Q8_0 activation block bytes: f16 d, 32 x i8.
const Q8_0_BYTES: usize = 34;

#[inline]
fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The exact integer dot of one MXFP4 block's levels with 32 activation quants.
#[inline]
fn block_dot(qs: &[u8], y: &[u8]) -> i32 {
    let (qs, y) = (&qs[..16], &y[..32]);
    let mut sumi = 0i32;
    for j in 0..16 {
        sumi += KVALUES[(qs[j] & 0xF) as usize] as i32 * y[j] as i8 as i32;
        sumi += KVALUES[(qs[j] >> 4) as usize] as i32 * y[j + 16] as i8 as i32;
    }
    sumi
}

/// Portable MXFP4 x Q8_0 dot, in the repacked kernels' order.
pub fn scalar(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut acc = 0f32;
    let blocks = w.chunks_exact(BLOCK_BYTES).zip(x.chunks_exact(Q8_0_BYTES));
    for (bw, bx) in blocks.take(n / 32) {
        let sumi = block_dot(&bw[1..], &bx[2..]);
        acc = (sumi as f32).mul_add(e8m0_to_f32_half(bw[0]) * f16_at(bx, 0), acc);
    }
    acc
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use std::arch::x86_64::*;

    use super::super::avx2::{dot_s8, hsum_i32, hsum_i32_x4, load, nibbles};
    use super::super::TOKENS;
    use super::{e8m0_to_f32_half, BLOCK_BYTES, KVALUES, Q8_0_BYTES};

    /// The 32 signed levels of the block at `b` (low nibbles first).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn levels(b: *const u8) -> __m256i {
        let lut = _mm256_broadcastsi128_si256(_mm_loadu_si128(KVALUES.as_ptr() as *const __m128i));
        _mm256_shuffle_epi8(lut, nibbles(b.add(1)))
    }

    /// `e8m0_half(e) * d_y` of block `i`: the gemv's `col_scale * row_scale`.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn scale(w: &[u8], x: &[u8], i: usize) -> f32 {
        let o = i * Q8_0_BYTES;
        let dy = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
            u16::from_le_bytes([x[o], x[o + 1]]) as i32,
        )));
        e8m0_to_f32_half(w[i * BLOCK_BYTES]) * dy
    }

    /// The integer dot of block `i` as 8 lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn lanes(lw: __m256i, x: &[u8], i: usize) -> __m256i {
        dot_s8(lw, load(x.as_ptr().add(i * Q8_0_BYTES + 2)))
    }

    /// `e8m0_half(e)` of weight blocks `i .. i + 4` (as [`e8m0_to_f32_half`]).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn weight_scales4(pw: *const u8, i: usize) -> __m128 {
        let e = _mm_setr_epi32(
            *pw.add(i * BLOCK_BYTES) as i32,
            *pw.add((i + 1) * BLOCK_BYTES) as i32,
            *pw.add((i + 2) * BLOCK_BYTES) as i32,
            *pw.add((i + 3) * BLOCK_BYTES) as i32,
        );
        let normal = _mm_slli_epi32::<23>(_mm_sub_epi32(e, _mm_set1_epi32(1)));
        let subnormal = _mm_sllv_epi32(_mm_set1_epi32(0x0020_0000), e);
        let small = _mm_cmplt_epi32(e, _mm_set1_epi32(2));
        _mm_castsi128_ps(_mm_blendv_epi8(normal, subnormal, small))
    }

    /// The f16 scales of activation blocks `i .. i + 4`, as f32.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn act_scales4(x: &[u8], i: usize) -> __m128 {
        let px = x.as_ptr();
        let d = |k: usize| std::ptr::read_unaligned(px.add((i + k) * Q8_0_BYTES) as *const i16);
        _mm_cvtph_ps(_mm_setr_epi16(d(0), d(1), d(2), d(3), 0, 0, 0, 0))
    }

    /// `acc = fma(sum_k, scale_k, acc)` for k = 0..4 in order: four block
    /// sums (exact, |sum| <= 32 * 12 * 127, so exact in f32 too) and their
    /// `e8m0_half * d_y` (one f32 product each, as the scalar kernel's).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn fma4(acc: f32, sums: __m128i, scales: __m128) -> f32 {
        let (mut s, mut d) = ([0f32; 4], [0f32; 4]);
        _mm_storeu_ps(s.as_mut_ptr(), _mm_cvtepi32_ps(sums));
        _mm_storeu_ps(d.as_mut_ptr(), scales);
        let mut acc = acc;
        for k in 0..4 {
            acc = s[k].mul_add(d[k], acc);
        }
        acc
    }

    /// MXFP4 x Q8_0: block sums and scales four blocks at a time, then one
    /// FMA per block in block order.
    ///
    /// # Safety
    /// AVX2, FMA and F16C detected; `w` and `x` hold `n / 32` blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot(n: usize, w: &[u8], x: &[u8]) -> f32 {
        let nb = n / 32;
        let pw = w.as_ptr();
        let mut acc = 0f32;
        let mut i = 0;
        while i + 4 <= nb {
            let v = [
                lanes(levels(pw.add(i * BLOCK_BYTES)), x, i),
                lanes(levels(pw.add((i + 1) * BLOCK_BYTES)), x, i + 1),
                lanes(levels(pw.add((i + 2) * BLOCK_BYTES)), x, i + 2),
                lanes(levels(pw.add((i + 3) * BLOCK_BYTES)), x, i + 3),
            ];
            let scales = _mm_mul_ps(weight_scales4(pw, i), act_scales4(x, i));
            acc = fma4(acc, hsum_i32_x4(v), scales);
            i += 4;
        }
        for i in i..nb {
            let sumi = hsum_i32(lanes(levels(pw.add(i * BLOCK_BYTES)), x, i));
            acc = (sumi as f32).mul_add(scale(w, x, i), acc);
        }
        acc
    }

    /// [`dot`] for [`TOKENS`] activation rows, the weight levels unpacked
    /// once: each token's operations are [`dot`]'s, so its bits too.
    ///
    /// # Safety
    /// As [`dot`], for every row of `x`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_x4(n: usize, w: &[u8], x: [&[u8]; TOKENS]) -> [f32; TOKENS] {
        let nb = n / 32;
        let pw = w.as_ptr();
        let mut acc = [0f32; TOKENS];
        let mut i = 0;
        while i + 4 <= nb {
            let lw = [
                levels(pw.add(i * BLOCK_BYTES)),
                levels(pw.add((i + 1) * BLOCK_BYTES)),
                levels(pw.add((i + 2) * BLOCK_BYTES)),
                levels(pw.add((i + 3) * BLOCK_BYTES)),
            ];
            let dw = weight_scales4(pw, i);
            for t in 0..TOKENS {
                let xt = x[t];
                let v = [
                    lanes(lw[0], xt, i),
                    lanes(lw[1], xt, i + 1),
                    lanes(lw[2], xt, i + 2),
                    lanes(lw[3], xt, i + 3),
                ];
                let scales = _mm_mul_ps(dw, act_scales4(xt, i));
                acc[t] = fma4(acc[t], hsum_i32_x4(v), scales);
            }
            i += 4;
        }
        for i in i..nb {
            let lw = levels(pw.add(i * BLOCK_BYTES));
            for t in 0..TOKENS {
                let sumi = hsum_i32(lanes(lw, x[t], i));
                acc[t] = (sumi as f32).mul_add(scale(w, x[t], i), acc[t]);
            }
        }
        acc
    }
}
