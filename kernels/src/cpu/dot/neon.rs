//! aarch64 kernels: the portable kernels' f32 arithmetic (`scalar::*_with`)
//! over NEON integer dots, so they give the portable kernels' bits. NEON is
//! part of the aarch64 baseline: nothing to detect.

use std::arch::aarch64::*;

use strata_model::GgmlType;

use super::scalar::{self, IntDots};
use super::DotFn;

struct Neon;

/// Sum of products of 16 i8 pairs, added to `acc` as 4 i32 lanes.
#[inline(always)]
unsafe fn dot16(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // i8 x i8 fits i16 (at most 2^14); pairs are widened before adding.
    let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    let hi = vmull_high_s8(a, b);
    vpadalq_s16(vpadalq_s16(acc, lo), hi)
}

/// The 16 5th bits of `qh` from bit `first` on, as bytes of 0 or 16.
#[inline(always)]
unsafe fn high_bits(qh: u32, first: u32) -> uint8x16_t {
    let bits = (qh >> first) as u16;
    let bytes = vcombine_u8(vdup_n_u8(bits as u8), vdup_n_u8((bits >> 8) as u8));
    let masks = vld1q_u8([1u8, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128].as_ptr());
    vandq_u8(vtstq_u8(bytes, masks), vdupq_n_u8(16))
}

impl IntDots for Neon {
    #[inline(always)]
    fn i8_dot(a: &[i8], b: &[i8]) -> i32 {
        assert!(a.len() == b.len() && a.len() % 16 == 0, "i8_dot: lengths");
        // SAFETY: NEON is baseline on aarch64; loads stay within the slices (checked above).
        unsafe {
            let mut acc = vdupq_n_s32(0);
            for i in (0..a.len()).step_by(16) {
                acc = dot16(
                    acc,
                    vld1q_s8(a.as_ptr().add(i)),
                    vld1q_s8(b.as_ptr().add(i)),
                );
            }
            vaddvq_s32(acc)
        }
    }

    #[inline(always)]
    fn nibble_dot(qs: &[u8], qh: u32, offset: i32, y: &[i8]) -> i32 {
        let (qs, y) = (&qs[..16], &y[..32]);
        // SAFETY: as above; 16 and 32 elements, checked by the slicing.
        unsafe {
            let v = vld1q_u8(qs.as_ptr());
            let lo = vorrq_u8(vandq_u8(v, vdupq_n_u8(0x0F)), high_bits(qh, 0));
            let hi = vorrq_u8(vshrq_n_u8::<4>(v), high_bits(qh, 16));
            let off = vdupq_n_s8(offset as i8);
            let lo = vsubq_s8(vreinterpretq_s8_u8(lo), off);
            let hi = vsubq_s8(vreinterpretq_s8_u8(hi), off);
            let acc = dot16(vdupq_n_s32(0), lo, vld1q_s8(y.as_ptr()));
            vaddvq_s32(dot16(acc, hi, vld1q_s8(y.as_ptr().add(16))))
        }
    }

    #[inline(always)]
    fn q4_k_dots(q: &[u8], y: &[i8]) -> (i32, i32) {
        let (q, y) = (&q[..32], &y[..64]);
        // SAFETY: as above; 32 and 64 elements.
        unsafe {
            let m4 = vdupq_n_u8(0x0F);
            let (mut s1, mut s2) = (vdupq_n_s32(0), vdupq_n_s32(0));
            for h in 0..2 {
                let v = vld1q_u8(q.as_ptr().add(16 * h));
                let lo = vreinterpretq_s8_u8(vandq_u8(v, m4));
                let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(v));
                s1 = dot16(s1, lo, vld1q_s8(y.as_ptr().add(16 * h)));
                s2 = dot16(s2, hi, vld1q_s8(y.as_ptr().add(32 + 16 * h)));
            }
            (vaddvq_s32(s1), vaddvq_s32(s2))
        }
    }

    #[inline(always)]
    fn q6_k_sums(ql: &[u8], qh: &[u8], y: &[i8]) -> [i32; 8] {
        let (ql, qh, y) = (&ql[..64], &qh[..32], &y[..128]);
        let mut s = [0i32; 8];
        // SAFETY: as above; 64, 32 and 128 elements.
        unsafe {
            let (m4, m3, m32) = (vdupq_n_u8(0x0F), vdupq_n_u8(3), vdupq_n_s8(32));
            for half in 0..2 {
                let a = vld1q_u8(ql.as_ptr().add(16 * half));
                let b = vld1q_u8(ql.as_ptr().add(32 + 16 * half));
                let h = vld1q_u8(qh.as_ptr().add(16 * half));
                let hb = |shift: i32| {
                    let v = match shift {
                        0 => h,
                        2 => vshrq_n_u8::<2>(h),
                        4 => vshrq_n_u8::<4>(h),
                        _ => vshrq_n_u8::<6>(h),
                    };
                    vshlq_n_u8::<4>(vandq_u8(v, m3))
                };
                let q = [
                    vorrq_u8(vandq_u8(a, m4), hb(0)),
                    vorrq_u8(vandq_u8(b, m4), hb(2)),
                    vorrq_u8(vshrq_n_u8::<4>(a), hb(4)),
                    vorrq_u8(vshrq_n_u8::<4>(b), hb(6)),
                ];
                for (k, q) in q.iter().enumerate() {
                    let q = vsubq_s8(vreinterpretq_s8_u8(*q), m32);
                    let yv = vld1q_s8(y.as_ptr().add(32 * k + 16 * half));
                    s[2 * k + half] = vaddvq_s32(dot16(vdupq_n_s32(0), q, yv));
                }
            }
        }
        s
    }
}

fn q4_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
    scalar::q4_0_with::<Neon>(n, w, x)
}
fn q4_1(n: usize, w: &[u8], x: &[u8]) -> f32 {
    scalar::q4_1_with::<Neon>(n, w, x)
}
fn q5_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
    scalar::q5_0_with::<Neon>(n, w, x)
}
fn q5_1(n: usize, w: &[u8], x: &[u8]) -> f32 {
    scalar::q5_1_with::<Neon>(n, w, x)
}
fn q8_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
    scalar::q8_0_with::<Neon>(n, w, x)
}
fn q4_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    scalar::q4_k_with::<Neon>(n, w, x)
}
fn q6_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    scalar::q6_k_with::<Neon>(n, w, x)
}
fn q8_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    scalar::q8_k_with::<Neon>(n, w, x)
}

/// The types with a NEON kernel.
pub fn kernels() -> Vec<(GgmlType, DotFn)> {
    vec![
        (GgmlType::Q4_0, q4_0 as DotFn),
        (GgmlType::Q4_1, q4_1),
        (GgmlType::Q5_0, q5_0),
        (GgmlType::Q5_1, q5_1),
        (GgmlType::Q8_0, q8_0),
        (GgmlType::Q4K, q4_k),
        (GgmlType::Q6K, q6_k),
        (GgmlType::Q8K, q8_k),
    ]
}
