//! Portable dot products, one per weight type, with ggml's arithmetic:
//! integer sums per block (exact), then one f32 scale per block or
//! sub-block. The reference for the SIMD paths.
//!
//! Each kernel's f32 part takes its integer dots as a parameter
//! ([`IntDots`]): the NEON kernels (`neon.rs`) reuse it with vector integer
//! dots, so they give these kernels' bits by construction.

use strata_model::quant::k_quants::{q3k_scales, scale_min_k4};

/// Q8_0 (`q8_1 == false`: f16 d, 32 x i8) or Q8_1 (f16 d, f16 d * sum,
/// 32 x i8) activation blocks as ggml's x86 quantizers make them: scale
/// `amax / 127`, multiply by `127 / amax`, round half to even. (ggml's
/// portable `_ref` quantizers divide by the scale and round half away from
/// zero; llama.cpp on x86, where our references come from, does this.)
pub fn quantize_q8(x: &[f32], out: &mut [u8], q8_1: bool) {
    let bb = if q8_1 { 36 } else { 34 };
    let hdr = bb - 32;
    assert!(
        x.len() % 32 == 0 && out.len() == x.len() / 32 * bb,
        "quantize_q8: lengths"
    );
    for (xb, ob) in x.chunks_exact(32).zip(out.chunks_exact_mut(bb)) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (o, v) in ob[hdr..].iter_mut().zip(xb) {
            let q = (v * id).round_ties_even() as i32;
            sum += q;
            *o = q as i8 as u8;
        }
        ob[0..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
        if q8_1 {
            ob[2..4].copy_from_slice(&half::f16::from_f32(d * sum as f32).to_le_bytes());
        }
    }
}

#[inline]
pub(super) fn f16(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

#[inline]
pub(super) fn f32_at(b: &[u8], at: usize) -> f32 {
    f32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline]
fn i8s(b: &[u8]) -> impl Iterator<Item = i32> + '_ {
    b.iter().map(|&v| v as i8 as i32)
}

/// The f32 activation of `x` at index `i` (little-endian, any alignment).
#[inline]
fn act(x: &[u8], i: usize) -> f32 {
    f32_at(x, 4 * i)
}

/// F32 weights as `ggml_vec_dot_f32` sums them (one token; see
/// [`f32_sgemm`] for batches).
#[inline(always)]
pub fn f32(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let floats = |b: &[u8]| -> Vec<f32> { (0..n).map(|i| f32_at(b, 4 * i)).collect() };
    crate::cpu::f32_sums::dot_f32_ggml(&floats(w), &floats(x))
}

/// F32 weights as llamafile's tinyBLAS sums them (`n` a multiple of 16).
#[inline(always)]
pub fn f32_sgemm(n: usize, w: &[u8], x: &[u8]) -> f32 {
    crate::cpu::f32_sums::dot_f32_tinyblas(n, w, x)
}

pub fn f16_row(n: usize, w: &[u8], x: &[u8]) -> f32 {
    (0..n).map(|i| f16(w, 2 * i) * act(x, i)).sum()
}

pub fn bf16(n: usize, w: &[u8], x: &[u8]) -> f32 {
    (0..n)
        .map(|i| half::bf16::from_le_bytes([w[2 * i], w[2 * i + 1]]).to_f32() * act(x, i))
        .sum()
}

/// Blocks of 32 against Q8_0 blocks (`d: f16, qs: [i8; 32]`): `sumi(block, qs)`
/// gives the integer dot of one weight block with the activation quants.
#[inline]
pub(super) fn sum_q8_0(
    n: usize,
    w: &[u8],
    wb: usize,
    x: &[u8],
    sumi: impl Fn(&[u8], &[i8]) -> i32,
) -> f32 {
    let mut sum = 0.0f32;
    for (bw, bx) in w.chunks_exact(wb).zip(x.chunks_exact(34)).take(n / 32) {
        let y: &[i8] = bytemuck::cast_slice(&bx[2..34]);
        sum += sumi(bw, y) as f32 * f16(bw, 0) * f16(bx, 0);
    }
    sum
}

/// Blocks of 32 with a min against Q8_1 blocks (`d, s = d * sum(qs), qs`).
#[inline]
pub(super) fn sum_q8_1(
    n: usize,
    w: &[u8],
    wb: usize,
    x: &[u8],
    sumi: impl Fn(&[u8], &[i8]) -> i32,
) -> f32 {
    let mut sum = 0.0f32;
    for (bw, bx) in w.chunks_exact(wb).zip(x.chunks_exact(36)).take(n / 32) {
        let y: &[i8] = bytemuck::cast_slice(&bx[4..36]);
        sum += (f16(bw, 0) * f16(bx, 0)) * sumi(bw, y) as f32 + f16(bw, 2) * f16(bx, 2);
    }
    sum
}

/// Integer dot of 16 nibble pairs (low nibble: element j, high: j + 16),
/// each level minus `offset`, plus the 5th bits of `qh` (0 for 4-bit types).
#[inline]
pub(super) fn nibble_dot(qs: &[u8], qh: u32, offset: i32, y: &[i8]) -> i32 {
    let (qs, y) = (&qs[..16], &y[..32]);
    let mut sumi = 0;
    for j in 0..16 {
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        let v0 = ((qs[j] & 0xF) as u32 | h0) as i32 - offset;
        let v1 = ((qs[j] >> 4) as u32 | h1) as i32 - offset;
        sumi += v0 * y[j] as i32 + v1 * y[j + 16] as i32;
    }
    sumi
}

#[inline]
pub(super) fn qh_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The integer parts of the dot products, exact on every implementation.
pub(super) trait IntDots {
    /// `sum a_i * b_i` over equal-length i8 slices (a multiple of 16 long).
    fn i8_dot(a: &[i8], b: &[i8]) -> i32;
    /// [`nibble_dot`].
    fn nibble_dot(qs: &[u8], qh: u32, offset: i32, y: &[i8]) -> i32;
    /// Q4_K chunk (32 bytes of nibble pairs) against its 64 quants: the
    /// dots of the low and of the high nibbles.
    fn q4_k_dots(q: &[u8], y: &[i8]) -> (i32, i32);
    /// One Q6_K half-block (ql: 64 bytes, qh: 32) against its 128 quants:
    /// `s[2k + half]` = the dot of the 16-element sub-block `half` of quarter `k`.
    fn q6_k_sums(ql: &[u8], qh: &[u8], y: &[i8]) -> [i32; 8];
}

/// Plain Rust integer dots.
pub(super) struct Portable;

impl IntDots for Portable {
    fn i8_dot(a: &[i8], b: &[i8]) -> i32 {
        a.iter().zip(b).map(|(&a, &b)| a as i32 * b as i32).sum()
    }

    fn nibble_dot(qs: &[u8], qh: u32, offset: i32, y: &[i8]) -> i32 {
        nibble_dot(qs, qh, offset, y)
    }

    fn q4_k_dots(q: &[u8], y: &[i8]) -> (i32, i32) {
        let (q, y) = (&q[..32], &y[..64]);
        let (mut s1, mut s2) = (0i32, 0i32);
        for l in 0..32 {
            s1 += (q[l] & 0xF) as i32 * y[l] as i32;
            s2 += (q[l] >> 4) as i32 * y[l + 32] as i32;
        }
        (s1, s2)
    }

    fn q6_k_sums(ql: &[u8], qh: &[u8], y: &[i8]) -> [i32; 8] {
        let mut s = [0i32; 8];
        for half in 0..2 {
            let (mut s1, mut s2, mut s3, mut s4) = (0i32, 0i32, 0i32, 0i32);
            for l in 16 * half..16 * half + 16 {
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                s1 += q1 * y[l] as i32;
                s2 += q2 * y[l + 32] as i32;
                s3 += q3 * y[l + 64] as i32;
                s4 += q4 * y[l + 96] as i32;
            }
            (s[half], s[half + 2], s[half + 4], s[half + 6]) = (s1, s2, s3, s4);
        }
        s
    }
}

pub fn q4_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
    q4_0_with::<Portable>(n, w, x)
}

pub fn q4_1(n: usize, w: &[u8], x: &[u8]) -> f32 {
    q4_1_with::<Portable>(n, w, x)
}

pub fn q5_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
    q5_0_with::<Portable>(n, w, x)
}

pub fn q5_1(n: usize, w: &[u8], x: &[u8]) -> f32 {
    q5_1_with::<Portable>(n, w, x)
}

pub fn q8_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
    q8_0_with::<Portable>(n, w, x)
}

#[inline]
pub(super) fn q4_0_with<D: IntDots>(n: usize, w: &[u8], x: &[u8]) -> f32 {
    sum_q8_0(n, w, 18, x, |b, y| D::nibble_dot(&b[2..], 0, 8, y))
}

#[inline]
pub(super) fn q4_1_with<D: IntDots>(n: usize, w: &[u8], x: &[u8]) -> f32 {
    sum_q8_1(n, w, 20, x, |b, y| D::nibble_dot(&b[4..], 0, 0, y))
}

#[inline]
pub(super) fn q5_0_with<D: IntDots>(n: usize, w: &[u8], x: &[u8]) -> f32 {
    sum_q8_0(n, w, 22, x, |b, y| {
        D::nibble_dot(&b[6..], qh_at(b, 2), 16, y)
    })
}

#[inline]
pub(super) fn q5_1_with<D: IntDots>(n: usize, w: &[u8], x: &[u8]) -> f32 {
    sum_q8_1(n, w, 24, x, |b, y| {
        D::nibble_dot(&b[8..], qh_at(b, 4), 0, y)
    })
}

#[inline]
pub(super) fn q8_0_with<D: IntDots>(n: usize, w: &[u8], x: &[u8]) -> f32 {
    sum_q8_0(n, w, 34, x, |b, y| {
        D::i8_dot(bytemuck::cast_slice(&b[2..34]), y)
    })
}

/// Q8_1 weights have no min: d * d' * sum.
pub fn q8_1(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (bw, bx) in w.chunks_exact(36).zip(x.chunks_exact(36)).take(n / 32) {
        let sumi: i32 = i8s(&bw[4..36])
            .zip(i8s(&bx[4..36]))
            .map(|(a, b)| a * b)
            .sum();
        sum += sumi as f32 * f16(bw, 0) * f16(bx, 0);
    }
    sum
}

/// `block_q8_K` fields: (d, qs, bsums).
#[inline]
fn q8k(b: &[u8]) -> (f32, &[i8], impl Fn(usize) -> i32 + '_) {
    let bsum = move |g: usize| i16::from_le_bytes([b[260 + 2 * g], b[261 + 2 * g]]) as i32;
    (f32_at(b, 0), bytemuck::cast_slice(&b[4..260]), bsum)
}

fn k_blocks<'a>(
    n: usize,
    w: &'a [u8],
    wb: usize,
    x: &'a [u8],
) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
    w.chunks_exact(wb).zip(x.chunks_exact(292)).take(n / 256)
}

/// Integer dots of the 2-bit fields at `shift` of `q` (32 bytes) with `y`,
/// for the two 16-element halves, each level plus `high(l)`.
#[inline]
fn crumb_dots(q: &[u8], shift: usize, y: &[i8], high: impl Fn(usize) -> i32) -> [i32; 2] {
    let mut s = [0i32; 2];
    for l in 0..32 {
        s[l / 16] += (((q[l] >> shift) & 3) as i32 + high(l)) * y[l] as i32;
    }
    s
}

pub fn q2_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (b, bx) in k_blocks(n, w, 84, x) {
        let (dy, y, bsum) = q8k(bx);
        let (scales, qs) = (&b[0..16], &b[16..80]);
        let (mut sumi, mut summ) = (0i32, 0i32);
        for h in 0..2 {
            for j in 0..4 {
                let e = 128 * h + 32 * j;
                let d = crumb_dots(&qs[32 * h..32 * h + 32], 2 * j, &y[e..e + 32], |_| 0);
                let s = 8 * h + 2 * j;
                sumi += (scales[s] & 0xF) as i32 * d[0] + (scales[s + 1] & 0xF) as i32 * d[1];
            }
        }
        for (s, sc) in scales.iter().enumerate() {
            summ += (sc >> 4) as i32 * bsum(s);
        }
        sum += dy * (f16(b, 80) * sumi as f32 - f16(b, 82) * summ as f32);
    }
    sum
}

pub fn q3_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (b, bx) in k_blocks(n, w, 110, x) {
        let (dy, y, _) = q8k(bx);
        let (hmask, qs, scales) = (&b[0..32], &b[32..96], q3k_scales(&b[96..108]));
        let mut sumi = 0i32;
        for h in 0..2 {
            for j in 0..4 {
                let e = 128 * h + 32 * j;
                let m = 1u8 << (4 * h + j);
                let high = |l: usize| if hmask[l] & m != 0 { 0 } else { -4 };
                let d = crumb_dots(&qs[32 * h..32 * h + 32], 2 * j, &y[e..e + 32], high);
                let s = 8 * h + 2 * j;
                sumi += scales[s] as i32 * d[0] + scales[s + 1] as i32 * d[1];
            }
        }
        sum += f16(b, 108) * dy * sumi as f32;
    }
    sum
}

/// Q4_K and Q5_K: eight sub-blocks of 32 with 6-bit scales and mins;
/// `dots(block, j, y)` gives the integer dots of sub-blocks 2j and 2j+1
/// with their 64 activation quants `y`.
#[inline]
fn qk_asym(
    n: usize,
    w: &[u8],
    wb: usize,
    x: &[u8],
    dots: impl Fn(&[u8], usize, &[i8]) -> (i32, i32),
) -> f32 {
    let mut sum = 0.0f32;
    for (b, bx) in k_blocks(n, w, wb, x) {
        let (dy, y, bsum) = q8k(bx);
        let (mut sumi, mut summ) = (0i32, 0i32);
        for j in 0..4 {
            let (s1, s2) = dots(b, j, &y[64 * j..64 * j + 64]);
            let (sc1, m1) = scale_min_k4(2 * j, &b[4..16]);
            let (sc2, m2) = scale_min_k4(2 * j + 1, &b[4..16]);
            sumi += sc1 as i32 * s1 + sc2 as i32 * s2;
            summ += m1 as i32 * (bsum(4 * j) + bsum(4 * j + 1))
                + m2 as i32 * (bsum(4 * j + 2) + bsum(4 * j + 3));
        }
        sum += dy * (f16(b, 0) * sumi as f32 - f16(b, 2) * summ as f32);
    }
    sum
}

pub fn q4_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    q4_k_with::<Portable>(n, w, x)
}

#[inline]
pub(super) fn q4_k_with<D: IntDots>(n: usize, w: &[u8], x: &[u8]) -> f32 {
    qk_asym(n, w, 144, x, |b, j, y| {
        D::q4_k_dots(&b[16 + 32 * j..16 + 32 * j + 32], y)
    })
}

pub fn q5_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    qk_asym(n, w, 176, x, |b, j, y| {
        let (qh, q, y) = (&b[16..48], &b[48 + 32 * j..48 + 32 * j + 32], &y[..64]);
        let (mut s1, mut s2) = (0i32, 0i32);
        for l in 0..32 {
            let h1 = ((qh[l] >> (2 * j)) & 1) << 4;
            let h2 = ((qh[l] >> (2 * j + 1)) & 1) << 4;
            s1 += ((q[l] & 0xF) | h1) as i32 * y[l] as i32;
            s2 += ((q[l] >> 4) | h2) as i32 * y[l + 32] as i32;
        }
        (s1, s2)
    })
}

pub fn q6_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    q6_k_with::<Portable>(n, w, x)
}

#[inline]
pub(super) fn q6_k_with<D: IntDots>(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (b, bx) in k_blocks(n, w, 210, x) {
        let (dy, y, _) = q8k(bx);
        let mut sumi = 0i32;
        for h in 0..2 {
            let (ql, qh) = (&b[64 * h..64 * h + 64], &b[128 + 32 * h..128 + 32 * h + 32]);
            let s = D::q6_k_sums(ql, qh, &y[128 * h..128 * h + 128]);
            sumi += (0..8)
                .map(|k| b[192 + 8 * h + k] as i8 as i32 * s[k])
                .sum::<i32>();
        }
        sum += f16(b, 208) * dy * sumi as f32;
    }
    sum
}

pub fn q8_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    q8_k_with::<Portable>(n, w, x)
}

#[inline]
pub(super) fn q8_k_with<D: IntDots>(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (b, bx) in k_blocks(n, w, 292, x) {
        let sumi = D::i8_dot(
            bytemuck::cast_slice(&b[4..260]),
            bytemuck::cast_slice(&bx[4..260]),
        );
        sum += f32_at(b, 0) * f32_at(bx, 0) * sumi as f32;
    }
    sum
}
