//! The 256-element "K" super-block types (`block_q2_K` ... `block_q8_K` in
//! ggml-common.h): dequantization as ggml defines it, ggml's Q8_K activation
//! quantizer, and simple, valid (not error-optimal) quantizers for the rest.

use super::{f16_at, put_f16};

/// Elements per super-block.
pub const QK_K: usize = 256;

/// ggml's `nearest_int`: round half to even.
fn nearest(x: f32) -> i32 {
    x.round_ties_even() as i32
}

/// The (scale, min) pair `j` (0..8) of a Q4_K/Q5_K block's 12 packed bytes
/// (ggml's `get_scale_min_k4`).
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The sixteen 6-bit signed scales of a Q3_K block, unpacked from 12 bytes.
pub fn q3k_scales(s: &[u8]) -> [i8; 16] {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let a0 = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let a1 = u32::from_le_bytes([s[4], s[5], s[6], s[7]]);
    let tmp = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    let aux = [
        (a0 & KMASK2) | ((tmp & KMASK1) << 4),
        (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
        ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
        ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
    ];
    let mut out = [0i8; 16];
    for (i, v) in aux.iter().enumerate() {
        for (k, byte) in v.to_le_bytes().iter().enumerate() {
            out[4 * i + k] = (*byte as i8).wrapping_sub(32);
        }
    }
    out
}

/// `block_q2_K`: `scales: [u8; 16] (4-bit scale | 4-bit min << 4), qs: [u8; 64], d: f16, dmin: f16`.
pub fn dequantize_q2_k(b: &[u8], y: &mut [f32]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    let mut is = 0;
    for n in 0..2 {
        let q = &qs[32 * n..32 * n + 32];
        for j in 0..4 {
            let shift = 2 * j;
            for half in 0..2 {
                let sc = scales[is];
                is += 1;
                let (dl, ml) = (d * (sc & 0xF) as f32, dmin * (sc >> 4) as f32);
                for l in 0..16 {
                    let v = (q[16 * half + l] >> shift) & 3;
                    y[128 * n + 32 * j + 16 * half + l] = dl * v as f32 - ml;
                }
            }
        }
    }
}

/// `block_q3_K`: `hmask: [u8; 32], qs: [u8; 64], scales: [u8; 12] (16 x 6-bit), d: f16`.
pub fn dequantize_q3_k(b: &[u8], y: &mut [f32]) {
    let (hmask, qs) = (&b[0..32], &b[32..96]);
    let scales = q3k_scales(&b[96..108]);
    let d = f16_at(b, 108);
    let mut is = 0;
    for n in 0..2 {
        let q = &qs[32 * n..32 * n + 32];
        for j in 0..4 {
            let (shift, m) = (2 * j, 1u8 << (4 * n + j));
            for half in 0..2 {
                let dl = d * scales[is] as f32;
                is += 1;
                for l in 16 * half..16 * half + 16 {
                    let low = ((q[l] >> shift) & 3) as i32;
                    let v = low - if hmask[l] & m != 0 { 0 } else { 4 };
                    y[128 * n + 32 * j + l] = dl * v as f32;
                }
            }
        }
    }
}

/// `block_q4_K`: `d: f16, dmin: f16, scales: [u8; 12] (8 x (6-bit scale, 6-bit min)), qs: [u8; 128]`.
pub fn dequantize_q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for j in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * j, scales);
        let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        let q = &qs[32 * j..32 * j + 32];
        for l in 0..32 {
            y[64 * j + l] = d1 * (q[l] & 0xF) as f32 - m1;
            y[64 * j + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// `block_q5_K`: `d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]`.
pub fn dequantize_q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for j in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * j, scales);
        let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
        let q = &qs[32 * j..32 * j + 32];
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[64 * j + l] = d1 * ((q[l] & 0xF) + h1) as f32 - m1;
            y[64 * j + 32 + l] = d2 * ((q[l] >> 4) + h2) as f32 - m2;
        }
    }
}

/// `block_q6_K`: `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`.
pub fn dequantize_q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for n in 0..2 {
        let ql = &b[64 * n..64 * n + 64];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        let sc = &b[192 + 8 * n..192 + 8 * n + 8];
        let out = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// `block_q8_K`: `d: f32, qs: [i8; 256], bsums: [i16; 16]` (sums of 16 quants).
pub fn dequantize_q8_k(b: &[u8], y: &mut [f32]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for j in 0..QK_K {
        y[j] = b[4 + j] as i8 as f32 * d;
    }
}

/// ggml's `quantize_row_q8_K_ref` for one block.
pub fn quantize_q8_k(x: &[f32], b: &mut [u8]) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in &x[..QK_K] {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    b.fill(0);
    if amax == 0.0 {
        return;
    }
    let iscale = -127.0 / max;
    for j in 0..QK_K {
        b[4 + j] = nearest(iscale * x[j]).min(127) as i8 as u8;
    }
    for g in 0..16 {
        let s: i32 = (0..16).map(|k| b[4 + 16 * g + k] as i8 as i32).sum();
        b[260 + 2 * g..262 + 2 * g].copy_from_slice(&(s as i16).to_le_bytes());
    }
    b[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
}

/// Per-sub-block (scale, min) fitting for the asymmetric types: the range of
/// each sub-block (min clamped to <= 0) over `levels` steps.
fn fit_asym(x: &[f32], sub: usize, levels: f32) -> (Vec<f32>, Vec<f32>) {
    x.chunks(sub)
        .map(|c| {
            let lo = c.iter().fold(0.0f32, |a, &v| a.min(v));
            let hi = c.iter().fold(lo, |a, &v| a.max(v));
            ((hi - lo) / levels, -lo)
        })
        .unzip()
}

/// Quantizes `v` (non-negative) against `max` onto 0..=`top`; returns the
/// super-block step (max/top) and the integer levels.
fn super_scale(v: &[f32], top: u8) -> (f32, Vec<u8>) {
    let max = v.iter().fold(0.0f32, |a, &s| a.max(s));
    let inv = if max > 0.0 { top as f32 / max } else { 0.0 };
    (
        max / top as f32,
        v.iter()
            .map(|&s| nearest(inv * s).clamp(0, top as i32) as u8)
            .collect(),
    )
}

/// Quantizes the asymmetric sub-blocks of `x` given effective scales and mins.
fn levels_asym(x: &[f32], sub: usize, d: &[f32], m: &[f32], top: i32) -> Vec<u8> {
    let mut out = vec![0u8; x.len()];
    for (i, c) in x.chunks(sub).enumerate() {
        if d[i] == 0.0 {
            continue;
        }
        for (k, &v) in c.iter().enumerate() {
            out[sub * i + k] = nearest((v + m[i]) / d[i]).clamp(0, top) as u8;
        }
    }
    out
}

/// Packs Q4_K/Q5_K 6-bit (scale, min) pairs into 12 bytes.
fn pack_scale_min_k4(ls: &[u8], lm: &[u8], s: &mut [u8]) {
    s.fill(0);
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
}

/// The Q4_K/Q5_K scales and levels of one block: writes d, dmin and scales
/// to `b[0..16]`, returns the levels (0..=top).
fn quantize_qk_asym(x: &[f32], b: &mut [u8], top: i32) -> Vec<u8> {
    let (scales, mins) = fit_asym(x, 32, top as f32);
    let (ds, ls) = super_scale(&scales, 63);
    let (dm, lm) = super_scale(&mins, 63);
    put_f16(b, 0, ds);
    put_f16(b, 2, dm);
    pack_scale_min_k4(&ls, &lm, &mut b[4..16]);
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let de: Vec<f32> = ls.iter().map(|&l| d * l as f32).collect();
    let me: Vec<f32> = lm.iter().map(|&l| dmin * l as f32).collect();
    levels_asym(x, 32, &de, &me, top)
}

pub fn quantize_q4_k(x: &[f32], b: &mut [u8]) {
    let l = quantize_qk_asym(x, b, 15);
    for j in 0..4 {
        for k in 0..32 {
            b[16 + 32 * j + k] = l[64 * j + k] | (l[64 * j + 32 + k] << 4);
        }
    }
}

pub fn quantize_q5_k(x: &[f32], b: &mut [u8]) {
    let l = quantize_qk_asym(x, b, 31);
    b[16..48].fill(0);
    for j in 0..4 {
        for k in 0..32 {
            let (l1, l2) = (l[64 * j + k], l[64 * j + 32 + k]);
            b[16 + k] |= ((l1 >> 4) << (2 * j)) | ((l2 >> 4) << (2 * j + 1));
            b[48 + 32 * j + k] = (l1 & 0xF) | ((l2 & 0xF) << 4);
        }
    }
}

pub fn quantize_q2_k(x: &[f32], b: &mut [u8]) {
    let (scales, mins) = fit_asym(x, 16, 3.0);
    let (ds, ls) = super_scale(&scales, 15);
    let (dm, lm) = super_scale(&mins, 15);
    put_f16(b, 80, ds);
    put_f16(b, 82, dm);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    for i in 0..16 {
        b[i] = ls[i] | (lm[i] << 4);
    }
    let de: Vec<f32> = ls.iter().map(|&l| d * l as f32).collect();
    let me: Vec<f32> = lm.iter().map(|&l| dmin * l as f32).collect();
    let l = levels_asym(x, 16, &de, &me, 3);
    for n in 0..2 {
        for k in 0..32 {
            let e = 128 * n + k;
            b[16 + 32 * n + k] = l[e] | (l[e + 32] << 2) | (l[e + 64] << 4) | (l[e + 96] << 6);
        }
    }
}

/// Symmetric fit: per sub-block scale (signed max / -`neg`), then the signed
/// super-block scale; returns (d, sub-block levels) with levels in
/// `-lim..lim`.
fn fit_sym(x: &[f32], sub: usize, neg: f32, lim: i32) -> (f32, Vec<i32>) {
    let scales: Vec<f32> = x
        .chunks(sub)
        .map(|c| {
            let m = c
                .iter()
                .fold(0.0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
            m / -neg
        })
        .collect();
    let max = scales
        .iter()
        .fold(0.0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
    if max == 0.0 {
        return (0.0, vec![0; scales.len()]);
    }
    let iscale = -(lim as f32) / max;
    let ls = scales
        .iter()
        .map(|&s| nearest(iscale * s).clamp(-lim, lim - 1))
        .collect();
    (1.0 / iscale, ls)
}

/// Levels `0..2*half` of a symmetric type: nearest(x / (d * ls)) + half.
fn levels_sym(x: &[f32], sub: usize, d: f32, ls: &[i32], half: i32) -> Vec<u8> {
    let mut out = vec![half as u8; x.len()];
    for (i, c) in x.chunks(sub).enumerate() {
        let de = d * ls[i] as f32;
        if de == 0.0 {
            continue;
        }
        for (k, &v) in c.iter().enumerate() {
            out[sub * i + k] = (nearest(v / de).clamp(-half, half - 1) + half) as u8;
        }
    }
    out
}

pub fn quantize_q3_k(x: &[f32], b: &mut [u8]) {
    let (d, ls) = fit_sym(x, 16, 4.0, 32);
    put_f16(b, 108, d);
    let s = &mut b[96..108];
    s.fill(0);
    for (j, &l) in ls.iter().enumerate() {
        let l = (l + 32) as u8;
        if j < 8 {
            s[j] = l & 0xF;
        } else {
            s[j - 8] |= (l & 0xF) << 4;
        }
        s[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
    }
    let l = levels_sym(x, 16, f16_at(b, 108), &ls, 4);
    b[0..96].fill(0);
    for n in 0..2 {
        for j in 0..4 {
            for k in 0..32 {
                let v = l[128 * n + 32 * j + k];
                b[32 + 32 * n + k] |= (v & 3) << (2 * j);
                b[k] |= (v >> 2) << (4 * n + j);
            }
        }
    }
}

pub fn quantize_q6_k(x: &[f32], b: &mut [u8]) {
    let (d, ls) = fit_sym(x, 16, 32.0, 128);
    put_f16(b, 208, d);
    for (i, &l) in ls.iter().enumerate() {
        b[192 + i] = l as i8 as u8;
    }
    let l = levels_sym(x, 16, f16_at(b, 208), &ls, 32);
    for n in 0..2 {
        for k in 0..32 {
            let e = 128 * n + k;
            let (q1, q2, q3, q4) = (l[e], l[e + 32], l[e + 64], l[e + 96]);
            b[64 * n + k] = (q1 & 0xF) | ((q3 & 0xF) << 4);
            b[64 * n + k + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4);
            b[128 + 32 * n + k] =
                (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
        }
    }
}
