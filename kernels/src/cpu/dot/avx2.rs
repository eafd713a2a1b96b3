//! AVX2 + FMA + F16C dot products (x86-64), after ggml's
//! `ggml-cpu/arch/x86/quants.c`: integer products with `maddubs`/`madd`,
//! one f32 FMA per block (or sub-block scale folded into the integers).
//!
//! Every kernel here is `unsafe`: callers must have checked [`detected`]
//! and the row lengths (`super::check_lengths`).

use std::arch::x86_64::*;

use strata_model::quant::k_quants::{q3k_scales, scale_min_k4};
use strata_model::GgmlType;

use super::scalar::f32_at;
use super::{DotFn, DotFnX4, TOKENS};

pub fn detected() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// Whether AVX-512 VNNI (with 256-bit forms) is there too.
pub fn vnni_detected() -> bool {
    detected() && is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl")
}

/// [`kernels_x4`] with the legacy types' VNNI loops (same bits).
pub fn kernels_x4_vnni() -> Vec<(GgmlType, DotFnX4)> {
    with_legacy(
        kernels_x4(),
        [
            q8_0_x4_vnni as DotFnX4,
            q4_0_x4_vnni,
            q5_0_x4_vnni,
            q4_1_x4_vnni,
            q5_1_x4_vnni,
        ],
    )
}

/// The types with an AVX2 kernel.
pub fn kernels() -> Vec<(GgmlType, DotFn)> {
    vec![
        (GgmlType::Q8_0, q8_0 as DotFn),
        (GgmlType::Q4_1, q4_1),
        (GgmlType::Q4_0, q4_0),
        (GgmlType::Q5_0, q5_0),
        (GgmlType::Q5_1, q5_1),
        (GgmlType::Q4K, q4_k),
        (GgmlType::Q6K, q6_k),
        (GgmlType::Q5K, q5_k),
        (GgmlType::F16, f16_row),
        (GgmlType::F32, f32_row),
        (GgmlType::BF16, bf16_row),
        (GgmlType::Q2K, q2_k),
        (GgmlType::Q3K, q3_k),
        (GgmlType::Q8K, q8_k),
        (GgmlType::Q8_1, q8_1),
        (GgmlType::MXFP4, super::mxfp4::avx2::dot),
    ]
}

/// Kernels for batches of [`super::TILED_MIN_TOKENS`] tokens or more, in
/// the order of llama.cpp's tiled K-quant matmul.
pub fn kernels_tiled() -> Vec<(GgmlType, DotFnX4)> {
    vec![
        (GgmlType::Q6K, q6_k_x4_tiled as DotFnX4),
        (GgmlType::Q5K, q5_k_x4_tiled),
        (GgmlType::Q3K, q3_k_x4_tiled),
    ]
}

/// The types with a kernel for one weight row against [`TOKENS`] activation
/// rows at once. Each token's result goes through exactly the operations of
/// the one-row kernel, so the results are the same bits; only the weight
/// loads and unpacking are shared.
pub fn kernels_x4() -> Vec<(GgmlType, DotFnX4)> {
    vec![
        (GgmlType::Q8_0, q8_0_x4 as DotFnX4),
        (GgmlType::Q4_0, q4_0_x4),
        (GgmlType::Q5_0, q5_0_x4),
        (GgmlType::Q4_1, q4_1_x4),
        (GgmlType::Q5_1, q5_1_x4),
        (GgmlType::Q4K, q4_k_x4),
        (GgmlType::Q5K, q5_k_x4),
        (GgmlType::Q6K, q6_k_x4),
        (GgmlType::Q2K, q2_k_x4),
        (GgmlType::MXFP4, super::mxfp4::avx2::dot_x4),
    ]
}

/// The f16 at byte `at`, converted with F16C and broadcast to 8 lanes.
/// (Broadcasting first matters: converting a lone f16 lets LLVM insert it
/// into a stale register, chaining every block to the accumulator.
/// `half`'s conversion is slower still: it detects CPU features per call.)
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn f16x8(b: &[u8], at: usize) -> __m256 {
    _mm256_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes([b[at], b[at + 1]])))
}

#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn f16(b: &[u8], at: usize) -> f32 {
    _mm256_cvtss_f32(f16x8(b, at))
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Sum of the 8 i32 lanes (exact).
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s)))
}

#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn load(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// 16 bytes of nibbles to 32 bytes: low nibbles first, then high nibbles.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn nibbles(p: *const u8) -> __m256i {
    let t = _mm_loadu_si128(p as *const __m128i);
    let b = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    _mm256_and_si256(b, _mm256_set1_epi8(0x0F))
}

/// Byte j is 0xFF where bit j of `x` is set.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn bits_to_bytes(x: u32) -> __m256i {
    let shuf = _mm256_set_epi64x(
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x as i32), shuf);
    let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
}

/// Sums of adjacent-4 products of unsigned `a` and signed `b`, as 8 i32.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn dot_us8(a: __m256i, b: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1))
}

/// Signed x signed via the sign trick (`b` must not hold -128; activations never do).
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn dot_s8(a: __m256i, b: __m256i) -> __m256i {
    dot_us8(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a))
}

/// The f16 at `p` and the one after it, as f32 lanes 0 and 1: a block's
/// scale and, in Q4_1, Q5_1 and Q8_1 blocks, its min or sum. One conversion
/// for both: a broadcast conversion per value costs two shuffle-port uops,
/// and four a block made the shuffle port the one-row loops' bottleneck.
/// (In Q8_0, Q4_0 and Q5_0 blocks lane 1 holds level bits, unused.)
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn f16_pair(p: *const u8) -> __m128 {
    _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(p as *const i32)))
}

/// The one-row block loops (against Q8_0 and Q8_1 activations) and the
/// five per-type kernels, for one instruction set. Per block, as ggml's
/// `vec_dot`: `acc += (dw * dx) * sum(levels * x)`, and for Q8_1
/// `mins += mw * sx` (a fused multiply-add, as ggml's compiled loop).
/// Kept apart from `legacy_x4_kernels!`: written as that loop generic over
/// the token count and run with one, decode was 16 % slower (SmolLM2
/// tg128, 49 against 58 tok/s).
macro_rules! legacy_kernels {
    ($features:literal, $dot_s8:ident, $dot_us8:ident, $sum0:ident, $sum1:ident,
     $q8_0:ident, $q4_0:ident, $q5_0:ident, $q4_1:ident, $q5_1:ident) => {
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn $sum0(
            n: usize,
            w: &[u8],
            wb: usize,
            x: &[u8],
            level: impl Fn(*const u8) -> __m256i,
        ) -> f32 {
            let mut acc = _mm256_setzero_ps();
            let (pw, px) = (w.as_ptr(), x.as_ptr());
            for i in 0..n / 32 {
                let (bw, bx) = (pw.add(i * wb), px.add(i * 34));
                let d = _mm256_broadcastss_ps(_mm_mul_ps(f16_pair(bw), f16_pair(bx)));
                let q = $dot_s8(level(bw), load(bx.add(2)));
                acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(q), acc);
            }
            hsum(acc)
        }

        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn $sum1(
            n: usize,
            w: &[u8],
            wb: usize,
            x: &[u8],
            level: impl Fn(*const u8) -> __m256i,
        ) -> f32 {
            let mut acc = _mm256_setzero_ps();
            // Lane 1: the sum of mw * sx.
            let mut mins = _mm_setzero_ps();
            let (pw, px) = (w.as_ptr(), x.as_ptr());
            for i in 0..n / 32 {
                let (bw, bx) = (pw.add(i * wb), px.add(i * 36));
                let (sw, sx) = (f16_pair(bw), f16_pair(bx));
                mins = _mm_fmadd_ps(sw, sx, mins);
                let d = _mm256_broadcastss_ps(_mm_mul_ps(sw, sx));
                let q = $dot_us8(level(bw), load(bx.add(4)));
                acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(q), acc);
            }
            hsum(acc) + _mm_cvtss_f32(_mm_movehdup_ps(mins))
        }

        #[target_feature(enable = $features)]
        unsafe fn $q8_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
            $sum0(n, w, 34, x, |b| load(b.add(2)))
        }

        #[target_feature(enable = $features)]
        unsafe fn $q4_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
            $sum0(n, w, 18, x, |b| levels_q4_0(b))
        }

        #[target_feature(enable = $features)]
        unsafe fn $q5_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
            $sum0(n, w, 22, x, |b| levels_q5_0(b))
        }

        #[target_feature(enable = $features)]
        unsafe fn $q4_1(n: usize, w: &[u8], x: &[u8]) -> f32 {
            $sum1(n, w, 20, x, |b| nibbles(b.add(4)))
        }

        #[target_feature(enable = $features)]
        unsafe fn $q5_1(n: usize, w: &[u8], x: &[u8]) -> f32 {
            $sum1(n, w, 24, x, |b| levels_q5_1(b))
        }
    };
}

legacy_kernels!(
    "avx2,fma,f16c",
    dot_s8,
    dot_us8,
    sum_q8_0,
    sum_q8_1,
    q8_0,
    q4_0,
    q5_0,
    q4_1,
    q5_1
);
legacy_kernels!(
    "avx2,fma,f16c,avx512vnni,avx512vl",
    dot_s8_vnni,
    dot_us8_vnni,
    sum_q8_0_vnni,
    sum_q8_1_vnni,
    q8_0_vnni,
    q4_0_vnni,
    q5_0_vnni,
    q4_1_vnni,
    q5_1_vnni
);

/// [`kernels`] with the legacy types' VNNI loops (same bits).
pub fn kernels_vnni() -> Vec<(GgmlType, DotFn)> {
    with_legacy(
        kernels(),
        [
            q8_0_vnni as DotFn,
            q4_0_vnni,
            q5_0_vnni,
            q4_1_vnni,
            q5_1_vnni,
        ],
    )
}

/// `k` with the five legacy types' kernels replaced, in [`LEGACY`] order.
fn with_legacy<F>(mut k: Vec<(GgmlType, F)>, legacy: [F; 5]) -> Vec<(GgmlType, F)> {
    for (t, f) in LEGACY.into_iter().zip(legacy) {
        if let Some(e) = k.iter_mut().find(|e| e.0 == t) {
            e.1 = f;
        }
    }
    k
}

/// The types whose blocks are 32 levels with one scale (and a min).
pub(super) const LEGACY: [GgmlType; 5] = [
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q5_0,
    GgmlType::Q4_1,
    GgmlType::Q5_1,
];

/// Q8_1 weights (no min) against Q8_1 activations.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_1(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let (pw, px) = (w.as_ptr(), x.as_ptr());
    for i in 0..n / 32 {
        let o = i * 36;
        let d = _mm256_mul_ps(f16x8(w, o), f16x8(x, o));
        let q = dot_s8(load(pw.add(o + 4)), load(px.add(o + 4)));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(q), acc);
    }
    hsum(acc)
}

/// `v >> shift` in each 16-bit lane, then `& mask` per byte: one field of packed levels.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn field(v: __m256i, shift: usize, mask: __m256i) -> __m256i {
    _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(shift as i32)), mask)
}

/// Broadcasts two i16 scales over the low and high halves (16 elements each
/// of a 32-byte level vector, after `maddubs`).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn two_scales(lo: i16, hi: i16) -> __m256i {
    _mm256_set_m128i(_mm_set1_epi16(hi), _mm_set1_epi16(lo))
}

/// One Q2_K super-block against a Q8_K block, per 128-element half
/// (8 sub-blocks of 16): (scaled level sums, min sums), exact integers.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q2_k_block(b: &[u8], bx: &[u8]) -> ([i32; 2], [i32; 2]) {
    let m3 = _mm256_set1_epi8(3);
    let (pb, q8) = (b.as_ptr(), bx.as_ptr().add(4));
    // Mins are the high nibbles of the 16 scale bytes; lane k of the madd
    // holds sub-blocks 2k and 2k + 1, so lanes 0-3 are half 0.
    let sc = _mm_loadu_si128(pb as *const __m128i);
    let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(sc), _mm_set1_epi8(15)));
    let m: [i32; 8] = std::mem::transmute(_mm256_madd_epi16(mins, load(bx.as_ptr().add(260))));
    let summ = [m[0] + m[1] + m[2] + m[3], m[4] + m[5] + m[6] + m[7]];
    let mut sumi = [_mm256_setzero_si256(); 2];
    for (h, sumi) in sumi.iter_mut().enumerate() {
        let bits = load(pb.add(16 + 32 * h));
        for j in 0..4 {
            let p = _mm256_maddubs_epi16(field(bits, 2 * j, m3), load(q8.add(128 * h + 32 * j)));
            let s = 8 * h + 2 * j;
            let sc = two_scales((b[s] & 0xF) as i16, (b[s + 1] & 0xF) as i16);
            *sumi = _mm256_add_epi32(*sumi, _mm256_madd_epi16(sc, p));
        }
    }
    ([hsum_i32(sumi[0]), hsum_i32(sumi[1])], summ)
}

/// Q2_K in the order of llama.cpp's AVX-512 build, which repacks Q2_K
/// weights (rows in eights) and runs lone tokens through
/// `ggml_gemv_q2_K_8x8_q8_K`: per super-block, the exact integer sum times
/// `d * dy` fused into one accumulator and the mins into another.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q2_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (mut acc, mut acc_m) = (0f32, 0f32);
    for i in 0..n / 256 {
        let (b, bx) = (&w[i * 84..(i + 1) * 84], &x[i * 292..(i + 1) * 292]);
        let (si, sm) = q2_k_block(b, bx);
        let dy = f32_at(bx, 0);
        acc = ((si[0] + si[1]) as f32).mul_add(f16(b, 80) * dy, acc);
        acc_m = ((sm[0] + sm[1]) as f32).mul_add(f16(b, 82) * dy, acc_m);
    }
    acc - acc_m
}

/// Q2_K for four tokens in the order of `ggml_gemm_q2_K_8x8_q8_K` (each
/// group of four tokens): one fused multiply-add per 128-element half.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q2_k_x4(n: usize, w: &[u8], x: [&[u8]; T]) -> [f32; T] {
    let mut acc = [0f32; T];
    let mut acc_m = [0f32; T];
    for i in 0..n / 256 {
        let b = &w[i * 84..(i + 1) * 84];
        let (dw, mw) = (f16(b, 80), f16(b, 82));
        for t in 0..T {
            let bx = &x[t][i * 292..(i + 1) * 292];
            let dy = f32_at(bx, 0);
            let (si, sm) = q2_k_block(b, bx);
            for h in 0..2 {
                acc[t] = (si[h] as f32).mul_add(dw * dy, acc[t]);
                acc_m[t] = (sm[h] as f32).mul_add(mw * dy, acc_m[t]);
            }
        }
    }
    std::array::from_fn(|t| acc[t] - acc_m[t])
}

/// One Q3_K super-block against a Q8_K block: the scaled level sums in 8
/// i32 lanes (exact), lane by lane as ggml's AVX2 `ggml_vec_dot_q3_K_q8_K`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q3_k_block(b: &[u8], bx: &[u8]) -> __m256i {
    let (m3, m1, m4s) = (
        _mm256_set1_epi8(3),
        _mm256_set1_epi8(1),
        _mm256_set1_epi8(4),
    );
    let (pb, q8) = (b.as_ptr(), bx.as_ptr().add(4));
    let scales = q3k_scales(&b[96..108]);
    let hbits = load(pb);
    let mut sumi = _mm256_setzero_si256();
    for h in 0..2 {
        let bits = load(pb.add(32 + 32 * h));
        for j in 0..4 {
            // u = low | high << 2 in 0..8; the level is u - 4.
            let hb = _mm256_slli_epi16(field(hbits, 4 * h + j, m1), 2);
            let u = _mm256_or_si256(field(bits, 2 * j, m3), hb);
            let y = load(q8.add(128 * h + 32 * j));
            let p = _mm256_sub_epi16(_mm256_maddubs_epi16(u, y), _mm256_maddubs_epi16(m4s, y));
            let s = 8 * h + 2 * j;
            let sc = two_scales(scales[s] as i16, scales[s + 1] as i16);
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(sc, p));
        }
    }
    sumi
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q3_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for i in 0..n / 256 {
        let (b, bx) = (&w[i * 110..(i + 1) * 110], &x[i * 292..(i + 1) * 292]);
        let sumi = q3_k_block(b, bx);
        let d = f32_at(bx, 0) * f16(b, 108);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum(acc)
}

/// Q3_K for four tokens in the order of llama.cpp's tiled K-quant matmul
/// (8+ tokens): per super-block `acc = fma(sumi * d, dy, acc)`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q3_k_x4_tiled(n: usize, w: &[u8], x: [&[u8]; T]) -> [f32; T] {
    let mut acc = [0f32; T];
    for i in 0..n / 256 {
        let b = &w[i * 110..(i + 1) * 110];
        let dw = f16(b, 108);
        for t in 0..T {
            let bx = &x[t][i * 292..(i + 1) * 292];
            let sumi = hsum_i32(q3_k_block(b, bx));
            acc[t] = (sumi as f32 * dw).mul_add(f32_at(bx, 0), acc[t]);
        }
    }
    acc
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for i in 0..n / 256 {
        let o = i * 292;
        let (pw, px) = (w.as_ptr().add(o + 4), x.as_ptr().add(o + 4));
        let mut sumi = _mm256_setzero_si256();
        for k in 0..8 {
            sumi = _mm256_add_epi32(sumi, dot_s8(load(pw.add(32 * k)), load(px.add(32 * k))));
        }
        let d = f32_at(w, o) * f32_at(x, o);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum(acc)
}

/// The 16 bsums of a Q8_K block, pairwise summed into 8 sums of 32.
#[inline]
fn bsums32(bx: &[u8]) -> [i32; 8] {
    let g = |k: usize| i16::from_le_bytes([bx[260 + 2 * k], bx[261 + 2 * k]]) as i32;
    std::array::from_fn(|s| g(2 * s) + g(2 * s + 1))
}

/// The low and high 5-bit levels of the 64 elements of Q5_K chunk `j`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q5_k_levels(b: *const u8, j: usize) -> (__m256i, __m256i) {
    let bits = load(b.add(48 + 32 * j));
    let hbits = load(b.add(16));
    let (m4, m1) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(1));
    let h = |bit: i32| {
        let v = _mm256_and_si256(_mm256_srl_epi16(hbits, _mm_cvtsi32_si128(bit)), m1);
        _mm256_slli_epi16(v, 4)
    };
    let lo = _mm256_or_si256(_mm256_and_si256(bits, m4), h(2 * j as i32));
    let hi = _mm256_or_si256(
        _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4),
        h(2 * j as i32 + 1),
    );
    (lo, hi)
}

/// One Q5_K super-block against a Q8_K block: the scaled level sums in 8
/// i32 lanes and the min sum (exact integers).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q5_k_block(b: &[u8], bx: &[u8]) -> (__m256i, i32) {
    let sums = bsums32(bx);
    let mut summ = 0i32;
    let mut sumi = _mm256_setzero_si256();
    let q8 = bx.as_ptr().add(4);
    for j in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * j, &b[4..16]);
        let (sc2, m2) = scale_min_k4(2 * j + 1, &b[4..16]);
        summ += m1 as i32 * sums[2 * j] + m2 as i32 * sums[2 * j + 1];
        let (ql, qh) = q5_k_levels(b.as_ptr(), j);
        let pl = _mm256_madd_epi16(
            _mm256_set1_epi16(sc1 as i16),
            _mm256_maddubs_epi16(ql, load(q8.add(64 * j))),
        );
        let ph = _mm256_madd_epi16(
            _mm256_set1_epi16(sc2 as i16),
            _mm256_maddubs_epi16(qh, load(q8.add(64 * j + 32))),
        );
        sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
    }
    (sumi, summ)
}

/// Q5_K in the order of ggml's AVX2 `ggml_vec_dot_q5_K_q8_K`: 8 f32 lanes
/// `fma(dy * d, sumi)` per super-block, the mins fused into one scalar as
/// `fma(-dy * dmin, summ, summs)`, added at the end.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut acc_m = 0.0f32;
    for i in 0..n / 256 {
        let (b, bx) = (&w[i * 176..(i + 1) * 176], &x[i * 292..(i + 1) * 292]);
        let dy = f32_at(bx, 0);
        let (sumi, summ) = q5_k_block(b, bx);
        acc = _mm256_fmadd_ps(
            _mm256_set1_ps(dy * f16(b, 0)),
            _mm256_cvtepi32_ps(sumi),
            acc,
        );
        acc_m = (-dy * f16(b, 2)).mul_add(summ as f32, acc_m);
    }
    hsum(acc) + acc_m
}

/// The low and high nibble levels of the 64 elements of Q4_K chunk `j`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q4_k_levels(b: *const u8, j: usize) -> (__m256i, __m256i) {
    let bits = load(b.add(16 + 32 * j));
    let m4 = _mm256_set1_epi8(0x0F);
    (
        _mm256_and_si256(bits, m4),
        _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4),
    )
}

/// Scaled level sums of Q4_K chunk `j` (sub-blocks 2j and 2j + 1) against
/// a Q8_K block, in 8 i32 lanes (exact).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q4_k_chunk(levels: (__m256i, __m256i), scales: (i16, i16), q8: *const u8) -> __m256i {
    let pl = _mm256_madd_epi16(
        _mm256_set1_epi16(scales.0),
        _mm256_maddubs_epi16(levels.0, load(q8)),
    );
    let ph = _mm256_madd_epi16(
        _mm256_set1_epi16(scales.1),
        _mm256_maddubs_epi16(levels.1, load(q8.add(32))),
    );
    _mm256_add_epi32(pl, ph)
}

/// The 8 (scale, min) pairs of a Q4_K block.
#[inline]
fn q4_k_scales(b: &[u8]) -> [(i16, i32); 8] {
    std::array::from_fn(|k| {
        let (sc, m) = scale_min_k4(k, &b[4..16]);
        (sc as i16, m as i32)
    })
}

/// Q4_K in the order of llama.cpp's x86 build, which repacks Q4_K weights
/// (rows in eights) and runs them through `ggml_gemv_q4_K_8x8_q8_K`: per
/// super-block, the exact integer sum times `d * dy` fused into one f32
/// accumulator and the mins into another, subtracted at the end.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (mut acc, mut acc_m) = (0f32, 0f32);
    for i in 0..n / 256 {
        let (b, bx) = (&w[i * 144..(i + 1) * 144], &x[i * 292..(i + 1) * 292]);
        let sc = q4_k_scales(b);
        let sums = bsums32(bx);
        let mut sumi = _mm256_setzero_si256();
        let mut summ = 0i32;
        for j in 0..4 {
            let levels = q4_k_levels(b.as_ptr(), j);
            let chunk = q4_k_chunk(
                levels,
                (sc[2 * j].0, sc[2 * j + 1].0),
                bx.as_ptr().add(4 + 64 * j),
            );
            sumi = _mm256_add_epi32(sumi, chunk);
            summ += sc[2 * j].1 * sums[2 * j] + sc[2 * j + 1].1 * sums[2 * j + 1];
        }
        let dy = f32_at(bx, 0);
        acc = (hsum_i32(sumi) as f32).mul_add(f16(b, 0) * dy, acc);
        acc_m = (summ as f32).mul_add(f16(b, 2) * dy, acc_m);
    }
    acc - acc_m
}

/// The lane sums of four i32 vectors, as `[sum(v0), sum(v1), sum(v2), sum(v3)]`.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn hsum_i32_x4(v: [__m256i; 4]) -> __m128i {
    let a = _mm256_hadd_epi32(v[0], v[1]);
    let b = _mm256_hadd_epi32(v[2], v[3]);
    let c = _mm256_hadd_epi32(a, b);
    _mm_add_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256::<1>(c))
}

/// The unsigned (+32) levels of half `h` of a Q6_K block, as four vectors
/// of 32 consecutive elements.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q6_k_levels(pb: *const u8, h: usize) -> [__m256i; 4] {
    let (m4, m2) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(3));
    let ql0 = load(pb.add(64 * h));
    let ql1 = load(pb.add(64 * h + 32));
    let qh = load(pb.add(128 + 32 * h));
    let high = |k: i32| {
        let v = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * k)), m2);
        _mm256_slli_epi16(v, 4)
    };
    [
        _mm256_or_si256(_mm256_and_si256(ql0, m4), high(0)),
        _mm256_or_si256(_mm256_and_si256(ql1, m4), high(1)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), high(2)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), high(3)),
    ]
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for i in 0..n / 256 {
        let (b, bx) = (&w[i * 210..(i + 1) * 210], &x[i * 292..(i + 1) * 292]);
        let (pb, q8) = (b.as_ptr(), bx.as_ptr().add(4));
        let mut sumi = _mm256_setzero_si256();
        for h in 0..2 {
            for (k, qk) in q6_k_levels(pb, h).iter().enumerate() {
                let y = load(q8.add(128 * h + 32 * k));
                let p = _mm256_maddubs_epi16(*qk, y);
                let s = 192 + 8 * h + 2 * k;
                let sc = _mm256_set_m128i(
                    _mm_set1_epi16(b[s + 1] as i8 as i16),
                    _mm_set1_epi16(b[s] as i8 as i16),
                );
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(sc, p));
            }
        }
        sumi = _mm256_sub_epi32(sumi, q6_k_offset(b, bx));
        let d = f32_at(bx, 0) * f16(b, 208);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum(acc)
}

/// Q6_K levels are stored + 32: ggml (`ggml_vec_dot_q6_K_q8_K`, AVX2)
/// takes `32 * scale * bsum` off per sub-block pair, lane k holding
/// sub-blocks 2k and 2k + 1. Matching its lanes keeps its f32 rounding.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q6_k_offset(b: &[u8], bx: &[u8]) -> __m256i {
    let scales = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.as_ptr().add(192) as *const __m128i));
    _mm256_slli_epi32::<5>(_mm256_madd_epi16(load(bx.as_ptr().add(260)), scales))
}

/// Dense rows (`n` a multiple of 8): four accumulators of 8 lanes; `load8(i)`
/// loads weights i..i+8 as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dense(n: usize, x: &[u8], load8: impl Fn(usize) -> __m256) -> f32 {
    let px = x.as_ptr() as *const f32;
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, a) in acc.iter_mut().enumerate() {
            let j = i + 8 * k;
            *a = _mm256_fmadd_ps(load8(j), _mm256_loadu_ps(px.add(j)), *a);
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(load8(i), _mm256_loadu_ps(px.add(i)), acc[0]);
        i += 8;
    }
    hsum(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f32_row(n: usize, w: &[u8], x: &[u8]) -> f32 {
    // ggml's order (the portable kernel), compiled with FMA.
    super::scalar::f32(n, w, x)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f32_sgemm(n: usize, w: &[u8], x: &[u8]) -> f32 {
    super::scalar::f32_sgemm(n, w, x)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_row(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let pw = w.as_ptr();
    let head = n / 8 * 8;
    let load8 = |i: usize| _mm256_cvtph_ps(_mm_loadu_si128(pw.add(2 * i) as *const __m128i));
    dense(head, x, load8) + tail(head, n, x, |i| super::scalar::f16(w, 2 * i))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bf16_row(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let pw = w.as_ptr();
    let head = n / 8 * 8;
    let load8 = |i: usize| {
        let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(pw.add(2 * i) as *const __m128i));
        _mm256_castsi256_ps(_mm256_slli_epi32(h, 16))
    };
    dense(head, x, load8)
        + tail(head, n, x, |i| {
            half::bf16::from_le_bytes([w[2 * i], w[2 * i + 1]]).to_f32()
        })
}

/// The elements of a dense row past its last group of 8.
fn tail(from: usize, n: usize, x: &[u8], wv: impl Fn(usize) -> f32) -> f32 {
    (from..n).map(|i| wv(i) * f32_at(x, 4 * i)).sum()
}

// ---- One weight row against TOKENS activation rows (same bits per token). ----

const T: usize = TOKENS;

// The legacy-type loops exist twice: with AVX2's `vpmaddubsw` + `vpmaddwd`,
// and with AVX-512 VNNI's single `vpdpbusd`. The integer sums are the same
// (no pair can saturate `vpmaddubsw`: levels and activations are at most
// 127 in magnitude, so a pair sums to at most 32258), so both give the same
// bits as `vec_dot`.

/// `dot_us8` with VNNI.
#[inline]
#[target_feature(enable = "avx2,avx512vnni,avx512vl")]
unsafe fn dot_us8_vnni(a: __m256i, b: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, b)
}

/// `dot_s8` with VNNI.
#[inline]
#[target_feature(enable = "avx2,avx512vnni,avx512vl")]
unsafe fn dot_s8_vnni(a: __m256i, b: __m256i) -> __m256i {
    dot_us8_vnni(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a))
}

/// Levels of one block: Q4_0, Q5_0 (signed) and Q5_1 (unsigned).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn levels_q4_0(b: *const u8) -> __m256i {
    _mm256_sub_epi8(nibbles(b.add(2)), _mm256_set1_epi8(8))
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn levels_q5_0(b: *const u8) -> __m256i {
    let qh = u32::from_le_bytes(std::ptr::read_unaligned(b.add(2) as *const [u8; 4]));
    let hi = _mm256_andnot_si256(bits_to_bytes(qh), _mm256_set1_epi8(0xF0u8 as i8));
    _mm256_or_si256(nibbles(b.add(6)), hi)
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn levels_q5_1(b: *const u8) -> __m256i {
    let qh = u32::from_le_bytes(std::ptr::read_unaligned(b.add(4) as *const [u8; 4]));
    let hi = _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10));
    _mm256_or_si256(nibbles(b.add(8)), hi)
}

/// The two block loops (against Q8_0 and Q8_1 activations) and the five
/// per-type kernels, for one instruction set.
macro_rules! legacy_x4_kernels {
    ($features:literal, $dot_s8:ident, $dot_us8:ident, $sum0:ident, $sum1:ident,
     $q8_0:ident, $q4_0:ident, $q5_0:ident, $q4_1:ident, $q5_1:ident) => {
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn $sum0(
            n: usize,
            w: &[u8],
            wb: usize,
            x: [&[u8]; T],
            level: impl Fn(*const u8) -> __m256i,
        ) -> [f32; T] {
            let mut acc = [_mm256_setzero_ps(); T];
            let pw = w.as_ptr();
            for i in 0..n / 32 {
                let bw = pw.add(i * wb);
                let sw = f16_pair(bw);
                let lw = level(bw);
                for t in 0..T {
                    let bx = x[t].as_ptr().add(i * 34);
                    let d = _mm256_broadcastss_ps(_mm_mul_ps(sw, f16_pair(bx)));
                    let q = $dot_s8(lw, load(bx.add(2)));
                    acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(q), acc[t]);
                }
            }
            std::array::from_fn(|t| hsum(acc[t]))
        }

        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn $sum1(
            n: usize,
            w: &[u8],
            wb: usize,
            x: [&[u8]; T],
            level: impl Fn(*const u8) -> __m256i,
        ) -> [f32; T] {
            let mut acc = [_mm256_setzero_ps(); T];
            // Lane 1 of each: the sum of mw * sx.
            let mut mins = [_mm_setzero_ps(); T];
            let pw = w.as_ptr();
            for i in 0..n / 32 {
                let bw = pw.add(i * wb);
                let sw = f16_pair(bw);
                let lw = level(bw);
                for t in 0..T {
                    let bx = x[t].as_ptr().add(i * 36);
                    let sx = f16_pair(bx);
                    mins[t] = _mm_fmadd_ps(sw, sx, mins[t]);
                    let d = _mm256_broadcastss_ps(_mm_mul_ps(sw, sx));
                    let q = $dot_us8(lw, load(bx.add(4)));
                    acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(q), acc[t]);
                }
            }
            std::array::from_fn(|t| hsum(acc[t]) + _mm_cvtss_f32(_mm_movehdup_ps(mins[t])))
        }

        #[target_feature(enable = $features)]
        unsafe fn $q8_0(n: usize, w: &[u8], x: [&[u8]; T]) -> [f32; T] {
            $sum0(n, w, 34, x, |b| load(b.add(2)))
        }

        #[target_feature(enable = $features)]
        unsafe fn $q4_0(n: usize, w: &[u8], x: [&[u8]; T]) -> [f32; T] {
            $sum0(n, w, 18, x, |b| levels_q4_0(b))
        }

        #[target_feature(enable = $features)]
        unsafe fn $q5_0(n: usize, w: &[u8], x: [&[u8]; T]) -> [f32; T] {
            $sum0(n, w, 22, x, |b| levels_q5_0(b))
        }

        #[target_feature(enable = $features)]
        unsafe fn $q4_1(n: usize, w: &[u8], x: [&[u8]; T]) -> [f32; T] {
            $sum1(n, w, 20, x, |b| nibbles(b.add(4)))
        }

        #[target_feature(enable = $features)]
        unsafe fn $q5_1(n: usize, w: &[u8], x: [&[u8]; T]) -> [f32; T] {
            $sum1(n, w, 24, x, |b| levels_q5_1(b))
        }
    };
}

legacy_x4_kernels!(
    "avx2,fma,f16c",
    dot_s8,
    dot_us8,
    sum_q8_0_x4,
    sum_q8_1_x4,
    q8_0_x4,
    q4_0_x4,
    q5_0_x4,
    q4_1_x4,
    q5_1_x4
);
legacy_x4_kernels!(
    "avx2,fma,f16c,avx512vnni,avx512vl",
    dot_s8_vnni,
    dot_us8_vnni,
    sum_q8_0_x4_vnni,
    sum_q8_1_x4_vnni,
    q8_0_x4_vnni,
    q4_0_x4_vnni,
    q5_0_x4_vnni,
    q4_1_x4_vnni,
    q5_1_x4_vnni
);

/// [`q5_k`] for four tokens (`TILED`: in the order of llama.cpp's tiled
/// K-quant matmul, taken for 8+ tokens: per super-block
/// `fma(fma(-dmin, summ, sumi * d), dy, acc)`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_k_x4_in<const TILED: bool>(n: usize, w: &[u8], x: [&[u8]; T]) -> [f32; T] {
    let mut acc = [_mm256_setzero_ps(); T];
    let mut acc_m = [0.0f32; T];
    for i in 0..n / 256 {
        let b = &w[i * 176..(i + 1) * 176];
        let (dw, mw) = (f16(b, 0), f16(b, 2));
        for t in 0..T {
            let bx = &x[t][i * 292..(i + 1) * 292];
            let dy = f32_at(bx, 0);
            let (sumi, summ) = q5_k_block(b, bx);
            if TILED {
                let r = (-mw).mul_add(summ as f32, hsum_i32(sumi) as f32 * dw);
                acc_m[t] = r.mul_add(dy, acc_m[t]);
            } else {
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dy * dw), _mm256_cvtepi32_ps(sumi), acc[t]);
                acc_m[t] = (-dy * mw).mul_add(summ as f32, acc_m[t]);
            }
        }
    }
    if TILED {
        acc_m
    } else {
        std::array::from_fn(|t| hsum(acc[t]) + acc_m[t])
    }
}

/// Q4_K for four tokens in the order of `ggml_gemm_q4_K_8x8_q8_K`, which
/// llama.cpp uses for each group of four tokens (the rest go through the
/// gemv order of [`q4_k`]): one fused multiply-add per 64-element chunk,
/// here for the four tokens in the lanes of one register.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_k_x4(n: usize, w: &[u8], x: [&[u8]; T]) -> [f32; T] {
    let mut acc = _mm_setzero_ps();
    let mut acc_m = _mm_setzero_ps();
    for i in 0..n / 256 {
        let b = &w[i * 144..(i + 1) * 144];
        let sc = q4_k_scales(b);
        // Each min twice, against the 16 bsums of 16: lane k of the madd is
        // min_k * (bsum of sub-block k); chunk j holds sub-blocks 2j, 2j + 1.
        let mins: [i16; 16] = std::array::from_fn(|k| sc[k / 2].1 as i16);
        let mins = _mm256_loadu_si256(mins.as_ptr() as *const __m256i);
        let mut q8 = [std::ptr::null::<u8>(); T];
        let mut dy = [0f32; T];
        let mut summ = [[0i32; T]; 4];
        for t in 0..T {
            let bx = &x[t][i * 292..(i + 1) * 292];
            q8[t] = bx.as_ptr().add(4);
            dy[t] = f32_at(bx, 0);
            let p: [i32; 8] =
                std::mem::transmute(_mm256_madd_epi16(mins, load(bx.as_ptr().add(260))));
            for j in 0..4 {
                summ[j][t] = p[2 * j] + p[2 * j + 1];
            }
        }
        let dy = _mm_loadu_ps(dy.as_ptr());
        let d = _mm_mul_ps(_mm_set1_ps(f16(b, 0)), dy);
        let dm = _mm_mul_ps(_mm_set1_ps(f16(b, 2)), dy);
        for (j, summ) in summ.iter().enumerate() {
            let levels = q4_k_levels(b.as_ptr(), j);
            let scales = (sc[2 * j].0, sc[2 * j + 1].0);
            let v = [
                q4_k_chunk(levels, scales, q8[0].add(64 * j)),
                q4_k_chunk(levels, scales, q8[1].add(64 * j)),
                q4_k_chunk(levels, scales, q8[2].add(64 * j)),
                q4_k_chunk(levels, scales, q8[3].add(64 * j)),
            ];
            let summ = _mm_loadu_si128(summ.as_ptr() as *const __m128i);
            acc = _mm_fmadd_ps(_mm_cvtepi32_ps(hsum_i32_x4(v)), d, acc);
            acc_m = _mm_fmadd_ps(_mm_cvtepi32_ps(summ), dm, acc_m);
        }
    }
    std::mem::transmute::<__m128, [f32; T]>(_mm_sub_ps(acc, acc_m))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_k_x4(n: usize, w: &[u8], x: [&[u8]; T]) -> [f32; T] {
    q5_k_x4_in::<false>(n, w, x)
}

/// [`q5_k_x4`] in the order of llama.cpp's tiled K-quant matmul (8+ tokens).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_k_x4_tiled(n: usize, w: &[u8], x: [&[u8]; T]) -> [f32; T] {
    q5_k_x4_in::<true>(n, w, x)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k_x4(n: usize, w: &[u8], x: [&[u8]; T]) -> [f32; T] {
    q6_k_x4_in::<false>(n, w, x)
}

/// [`q6_k_x4`] in the order of llama.cpp's tiled K-quant matmul
/// (`ggml-cpu/tiled`, taken for batches of 8 tokens or more): per
/// super-block `acc = fma(sumi * d, dy, acc)`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k_x4_tiled(n: usize, w: &[u8], x: [&[u8]; T]) -> [f32; T] {
    q6_k_x4_in::<true>(n, w, x)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k_x4_in<const TILED: bool>(n: usize, w: &[u8], x: [&[u8]; T]) -> [f32; T] {
    let mut acc = [_mm256_setzero_ps(); T];
    let mut acc_tiled = [0f32; T];
    for i in 0..n / 256 {
        let b = &w[i * 210..(i + 1) * 210];
        let pb = b.as_ptr();
        let mut sumi = [_mm256_setzero_si256(); T];
        for h in 0..2 {
            for (k, qk) in q6_k_levels(pb, h).iter().enumerate() {
                let s = 192 + 8 * h + 2 * k;
                let sc = _mm256_set_m128i(
                    _mm_set1_epi16(b[s + 1] as i8 as i16),
                    _mm_set1_epi16(b[s] as i8 as i16),
                );
                for t in 0..T {
                    let y = load(x[t].as_ptr().add(i * 292 + 4 + 128 * h + 32 * k));
                    let p = _mm256_maddubs_epi16(*qk, y);
                    sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(sc, p));
                }
            }
        }
        let dw = f16(b, 208);
        for t in 0..T {
            sumi[t] = _mm256_sub_epi32(sumi[t], q6_k_offset(b, &x[t][i * 292..(i + 1) * 292]));
            let dy = f32_at(x[t], i * 292);
            if TILED {
                // GCC fuses ggml's `buf + result * dy` (generic vector ops contract).
                acc_tiled[t] = (hsum_i32(sumi[t]) as f32 * dw).mul_add(dy, acc_tiled[t]);
            } else {
                let d = dy * dw;
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
            }
        }
    }
    if TILED {
        acc_tiled
    } else {
        std::array::from_fn(|t| hsum(acc[t]))
    }
}

// ---- Activation quantizer. ----

/// Q8_0 (`q8_1 == false`: f16 d, 32 x i8) or Q8_1 (f16 d, f16 d * sum, 32 x i8)
/// blocks of `x`: the bytes of [`super::scalar::quantize_q8`] (ggml's x86
/// arithmetic: scale amax / 127, multiply by 127 / amax, round half to even).
///
/// # Safety
/// AVX2 and F16C must be present; `x.len()` a multiple of 32 and `out` its blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8(x: &[f32], out: &mut [u8], q8_1: bool) {
    let bb = if q8_1 { 36 } else { 34 };
    let hdr = bb - 32;
    assert!(
        x.len() % 32 == 0 && out.len() == x.len() / 32 * bb,
        "quantize_q8: lengths"
    );
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    for (xb, ob) in x.chunks_exact(32).zip(out.chunks_exact_mut(bb)) {
        let p = xb.as_ptr();
        let v: [__m256; 4] = std::array::from_fn(|k| _mm256_loadu_ps(p.add(8 * k)));
        let a: [__m256; 4] = std::array::from_fn(|k| _mm256_and_ps(v[k], abs_mask));
        let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let q: [__m256i; 4] = std::array::from_fn(|k| {
            let s = _mm256_mul_ps(v[k], id);
            _mm256_cvtps_epi32(_mm256_round_ps::<
                { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
            >(s))
        });
        let w16 = _mm256_packs_epi16(
            _mm256_packs_epi32(q[0], q[1]),
            _mm256_packs_epi32(q[2], q[3]),
        );
        let bytes = _mm256_permutevar8x32_epi32(w16, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(ob.as_mut_ptr().add(hdr) as *mut __m256i, bytes);
        ob[0..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
        if q8_1 {
            let s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
            let sum = _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s)));
            ob[2..4].copy_from_slice(&half::f16::from_f32(sum as f32 * d).to_le_bytes());
        }
    }
}

/// Q8_K blocks of `x` (f32 d, 256 x i8, 16 x i16 bsums): the bytes of
/// `strata_model::quant::quantize_row` (scale from the first element of
/// largest magnitude, -127 / max, rounding half to even, clamped to 127).
///
/// # Safety
/// AVX2 must be present; `x.len()` a multiple of 256 and `out` its blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8_k(x: &[f32], out: &mut [u8]) {
    assert!(
        x.len() % 256 == 0 && out.len() == x.len() / 256 * 292,
        "quantize_q8_k: lengths"
    );
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    for (xb, ob) in x.chunks_exact(256).zip(out.chunks_exact_mut(292)) {
        let p = xb.as_ptr();
        let mut m = _mm256_setzero_ps();
        for k in 0..32 {
            m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(p.add(8 * k)), abs_mask));
        }
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        if amax == 0.0 {
            ob.fill(0);
            continue;
        }
        // The first element reaching amax, as the scalar strict-greater scan keeps.
        let max = *xb.iter().find(|v| v.abs() == amax).unwrap_or(&amax);
        let iscale = -127.0 / max;
        let vs = _mm256_set1_ps(iscale);
        let cap = _mm256_set1_epi32(127);
        let qs = ob.as_mut_ptr().add(4);
        for g in 0..8 {
            let q: [__m256i; 4] = std::array::from_fn(|k| {
                let v = _mm256_mul_ps(vs, _mm256_loadu_ps(p.add(32 * g + 8 * k)));
                let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
                _mm256_min_epi32(_mm256_cvtps_epi32(r), cap)
            });
            let w16 = _mm256_packs_epi16(
                _mm256_packs_epi32(q[0], q[1]),
                _mm256_packs_epi32(q[2], q[3]),
            );
            let bytes = _mm256_permutevar8x32_epi32(w16, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(qs.add(32 * g) as *mut __m256i, bytes);
        }
        for s in 0..16 {
            let sum: i32 = ob[4 + 16 * s..4 + 16 * (s + 1)]
                .iter()
                .map(|&b| b as i8 as i32)
                .sum();
            ob[260 + 2 * s..262 + 2 * s].copy_from_slice(&(sum as i16).to_le_bytes());
        }
        ob[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
    }
}
