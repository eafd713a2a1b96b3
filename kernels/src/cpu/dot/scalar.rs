//! Portable dot products, one per weight type, with ggml's arithmetic:
//! integer sums per block (exact), then one f32 scale per block or
//! sub-block. The reference for the SIMD paths.

use strata_model::quant::k_quants::{q3k_scales, scale_min_k4};

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

pub fn f32(n: usize, w: &[u8], x: &[u8]) -> f32 {
    (0..n).map(|i| f32_at(w, 4 * i) * act(x, i)).sum()
}

pub fn f16_row(n: usize, w: &[u8], x: &[u8]) -> f32 {
    (0..n).map(|i| f16(w, 2 * i) * act(x, i)).sum()
}

pub fn bf16(n: usize, w: &[u8], x: &[u8]) -> f32 {
    (0..n).map(|i| half::bf16::from_le_bytes([w[2 * i], w[2 * i + 1]]).to_f32() * act(x, i)).sum()
}

/// Blocks of 32 against Q8_0 blocks (`d: f16, qs: [i8; 32]`): `level(block, j)`
/// gives the signed weight level of element j.
#[inline]
fn sum_q8_0(n: usize, w: &[u8], wb: usize, x: &[u8], level: impl Fn(&[u8], usize) -> i32) -> f32 {
    let mut sum = 0.0f32;
    for (bw, bx) in w.chunks_exact(wb).zip(x.chunks_exact(34)).take(n / 32) {
        let sumi: i32 = i8s(&bx[2..34]).enumerate().map(|(j, y)| level(bw, j) * y).sum();
        sum += sumi as f32 * f16(bw, 0) * f16(bx, 0);
    }
    sum
}

/// Blocks of 32 with a min against Q8_1 blocks (`d, s = d * sum(qs), qs`).
#[inline]
fn sum_q8_1(n: usize, w: &[u8], wb: usize, x: &[u8], level: impl Fn(&[u8], usize) -> i32) -> f32 {
    let mut sum = 0.0f32;
    for (bw, bx) in w.chunks_exact(wb).zip(x.chunks_exact(36)).take(n / 32) {
        let sumi: i32 = i8s(&bx[4..36]).enumerate().map(|(j, y)| level(bw, j) * y).sum();
        sum += (f16(bw, 0) * f16(bx, 0)) * sumi as f32 + f16(bw, 2) * f16(bx, 2);
    }
    sum
}

#[inline]
fn nibble(qs: &[u8], j: usize) -> i32 {
    if j < 16 {
        (qs[j] & 0xF) as i32
    } else {
        (qs[j - 16] >> 4) as i32
    }
}

#[inline]
fn q5_bit(b: &[u8], at: usize, j: usize) -> i32 {
    let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    (((qh >> j) & 1) << 4) as i32
}

pub fn q4_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
    sum_q8_0(n, w, 18, x, |b, j| nibble(&b[2..], j) - 8)
}

pub fn q4_1(n: usize, w: &[u8], x: &[u8]) -> f32 {
    sum_q8_1(n, w, 20, x, |b, j| nibble(&b[4..], j))
}

pub fn q5_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
    sum_q8_0(n, w, 22, x, |b, j| (nibble(&b[6..], j) | q5_bit(b, 2, j)) - 16)
}

pub fn q5_1(n: usize, w: &[u8], x: &[u8]) -> f32 {
    sum_q8_1(n, w, 24, x, |b, j| nibble(&b[8..], j) | q5_bit(b, 4, j))
}

pub fn q8_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
    sum_q8_0(n, w, 34, x, |b, j| b[2 + j] as i8 as i32)
}

/// Q8_1 weights have no min: d * d' * sum.
pub fn q8_1(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (bw, bx) in w.chunks_exact(36).zip(x.chunks_exact(36)).take(n / 32) {
        let sumi: i32 = i8s(&bw[4..36]).zip(i8s(&bx[4..36])).map(|(a, b)| a * b).sum();
        sum += sumi as f32 * f16(bw, 0) * f16(bx, 0);
    }
    sum
}

/// `block_q8_K` fields: (d, qs, bsums).
#[inline]
fn q8k(b: &[u8]) -> (f32, &[u8], impl Fn(usize) -> i32 + '_) {
    let bsum = move |g: usize| i16::from_le_bytes([b[260 + 2 * g], b[261 + 2 * g]]) as i32;
    (f32_at(b, 0), &b[4..260], bsum)
}

/// Sum over `len` elements from `start` of level(e) * q8[e].
#[inline]
fn isum(q8: &[u8], start: usize, len: usize, level: impl Fn(usize) -> i32) -> i32 {
    (start..start + len).map(|e| level(e) * q8[e] as i8 as i32).sum()
}

fn k_blocks<'a>(n: usize, w: &'a [u8], wb: usize, x: &'a [u8]) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
    w.chunks_exact(wb).zip(x.chunks_exact(292)).take(n / 256)
}

pub fn q2_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (b, bx) in k_blocks(n, w, 84, x) {
        let (dy, q8, bsum) = q8k(bx);
        let (scales, qs) = (&b[0..16], &b[16..80]);
        let level = |e: usize| ((qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3) as i32;
        let (mut sumi, mut summ) = (0i32, 0i32);
        for s in 0..16 {
            sumi += (scales[s] & 0xF) as i32 * isum(q8, 16 * s, 16, level);
            summ += (scales[s] >> 4) as i32 * bsum(s);
        }
        sum += dy * (f16(b, 80) * sumi as f32 - f16(b, 82) * summ as f32);
    }
    sum
}

pub fn q3_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (b, bx) in k_blocks(n, w, 110, x) {
        let (dy, q8, _) = q8k(bx);
        let (hmask, qs, scales) = (&b[0..32], &b[32..96], q3k_scales(&b[96..108]));
        let level = |e: usize| {
            let (n, j, l) = (e / 128, (e % 128) / 32, e % 32);
            let low = ((qs[32 * n + l] >> (2 * j)) & 3) as i32;
            low - if hmask[l] & (1 << (4 * n + j)) != 0 { 0 } else { 4 }
        };
        let sumi: i32 = (0..16).map(|s| scales[s] as i32 * isum(q8, 16 * s, 16, level)).sum();
        sum += f16(b, 108) * dy * sumi as f32;
    }
    sum
}

/// Q4_K and Q5_K: eight sub-blocks of 32 with 6-bit scales and mins.
fn qk_asym(n: usize, w: &[u8], wb: usize, x: &[u8], level: impl Fn(&[u8], usize) -> i32) -> f32 {
    let mut sum = 0.0f32;
    for (b, bx) in k_blocks(n, w, wb, x) {
        let (dy, q8, bsum) = q8k(bx);
        let (mut sumi, mut summ) = (0i32, 0i32);
        for s in 0..8 {
            let (sc, m) = scale_min_k4(s, &b[4..16]);
            sumi += sc as i32 * isum(q8, 32 * s, 32, |e| level(b, e));
            summ += m as i32 * (bsum(2 * s) + bsum(2 * s + 1));
        }
        sum += dy * (f16(b, 0) * sumi as f32 - f16(b, 2) * summ as f32);
    }
    sum
}

pub fn q4_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    qk_asym(n, w, 144, x, |b, e| {
        let q = b[16 + 32 * (e / 64) + e % 32];
        (if e % 64 < 32 { q & 0xF } else { q >> 4 }) as i32
    })
}

pub fn q5_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    qk_asym(n, w, 176, x, |b, e| {
        let (j, l) = (e / 64, e % 32);
        let q = b[48 + 32 * j + l];
        let hi_half = e % 64 >= 32;
        let low = if hi_half { q >> 4 } else { q & 0xF };
        let bit = 2 * j + hi_half as usize;
        (low | (((b[16 + l] >> bit) & 1) << 4)) as i32
    })
}

pub fn q6_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (b, bx) in k_blocks(n, w, 210, x) {
        let (dy, q8, _) = q8k(bx);
        let level = |e: usize| {
            let (h, k, l) = (e / 128, (e % 128) / 32, e % 32);
            let ql = b[64 * h + 32 * (k & 1) + l];
            let low = if k < 2 { ql & 0xF } else { ql >> 4 };
            let high = (b[128 + 32 * h + l] >> (2 * k)) & 3;
            (low | (high << 4)) as i32 - 32
        };
        let sumi: i32 = (0..16).map(|s| b[192 + s] as i8 as i32 * isum(q8, 16 * s, 16, level)).sum();
        sum += f16(b, 208) * dy * sumi as f32;
    }
    sum
}

pub fn q8_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (b, bx) in k_blocks(n, w, 292, x) {
        let sumi: i32 = i8s(&b[4..260]).zip(i8s(&bx[4..260])).map(|(a, c)| a * c).sum();
        sum += f32_at(b, 0) * f32_at(bx, 0) * sumi as f32;
    }
    sum
}
