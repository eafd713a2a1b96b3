//! Every kernel against the scalar one, and the scalar one against
//! dequantize-then-f32-dot, on seeded random rows.
//!
//! Tolerances, relative to `mag = sum |w_i * x_i|` over the dequantized rows:
//! - SIMD vs scalar: 1e-5. Integer block sums are exact on both sides; only
//!   the order of the f32 block accumulation differs.
//! - scalar vs dequantized f32 dot: 1e-4. The f32 path rounds every element
//!   (d * q - m) before multiplying; the quantized path rounds per block.
//!   Q8_1 activations also carry `s = d * sum(q)` as f16, which the
//!   dequantized path never reads: add 2^-10 * sum |m_w * s_x| over blocks.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use strata_model::quant::{dequantize_row, quantize_row};
use strata_model::GgmlType;

use super::*;

const SEED: u64 = 0x0D07_2026;

fn f32_row(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    let scale = rng.random_range(0.01f32..3.0);
    (0..n)
        .map(|_| rng.random_range(-1.0f32..1.0) * scale)
        .collect()
}

/// Byte offsets of the f16 scale fields of a block (set to finite values in random blocks).
fn f16_fields(t: GgmlType) -> &'static [usize] {
    match t {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q8_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q2K => &[80, 82],
        GgmlType::Q3K => &[108],
        GgmlType::Q6K => &[208],
        _ => &[],
    }
}

/// A weight row: quantized from random floats, or (for block types) random
/// bytes with finite scales, so every bit pattern of the levels shows up.
fn weight_row(rng: &mut ChaCha8Rng, t: GgmlType, n: usize, random_bytes: bool) -> Vec<u8> {
    let bytes = t.row_bytes(n as u64).unwrap() as usize;
    let mut w = vec![0u8; bytes];
    if !random_bytes || t.block_elems() == 1 {
        quantize_row(t, &f32_row(rng, n), &mut w).unwrap();
        return w;
    }
    rng.fill(&mut w[..]);
    for b in w.chunks_mut(t.block_bytes()) {
        for &o in f16_fields(t) {
            let v = half::f16::from_f32(rng.random_range(-0.05f32..0.05));
            b[o..o + 2].copy_from_slice(&v.to_le_bytes());
        }
        if t == GgmlType::Q8K {
            b[0..4].copy_from_slice(&rng.random_range(-0.05f32..0.05).to_le_bytes());
        }
        if t == GgmlType::MXFP4 {
            // E8M0 exponent: scales 2^-18 .. 2^2 (255 would be 2^127).
            b[0] = rng.random_range(110u8..=130);
        }
    }
    w
}

fn dequantized(t: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut y = vec![0f32; n];
    dequantize_row(t, bytes, &mut y).unwrap();
    y
}

fn lengths(t: GgmlType) -> Vec<usize> {
    match t.block_elems() {
        1 => vec![1, 7, 8, 37, 64, 4096],
        32 => vec![32, 96, 1024, 4096],
        _ => vec![256, 768, 4096],
    }
}

/// The error bound from Q8_1's f16 `s`: 2^-10 * sum over blocks |m_w * s_x|.
fn q8_1_sum_rounding(t: GgmlType, w: &[u8], xq: &[u8]) -> f32 {
    if activation_type(t) != ActivationType::Q8_1 || t == GgmlType::Q8_1 {
        return 0.0;
    }
    let f16 = |b: &[u8]| half::f16::from_le_bytes([b[2], b[3]]).to_f32();
    let blocks = w.chunks(t.block_bytes()).zip(xq.chunks(36));
    blocks
        .map(|(bw, bx)| (f16(bw) * f16(bx)).abs())
        .sum::<f32>()
        / 1024.0
}

#[test]
fn activation_types_follow_ggml() {
    assert_eq!(activation_type(GgmlType::Q4_0), ActivationType::Q8_0);
    assert_eq!(activation_type(GgmlType::Q5_1), ActivationType::Q8_1);
    assert_eq!(activation_type(GgmlType::Q6K), ActivationType::Q8K);
    assert_eq!(activation_type(GgmlType::BF16), ActivationType::F32);
}

#[test]
fn kernels_match_scalar_and_dequantized_dot() {
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let mut xq = Vec::new();
    for t in GgmlType::ALL {
        for n in lengths(t) {
            for random_bytes in [false, true] {
                let w = weight_row(&mut rng, t, n, random_bytes);
                let x = f32_row(&mut rng, n);
                quantize_activation(t, &x, &mut xq);
                let wd = dequantized(t, &w, n);
                let xd = dequantized(activation_type(t).ggml_type(), &xq, n);
                let reference: f32 = wd.iter().zip(&xd).map(|(a, b)| a * b).sum();
                let mag: f32 = wd.iter().zip(&xd).map(|(a, b)| (a * b).abs()).sum::<f32>() + 1e-6;
                let tol = 1e-4 * mag + q8_1_sum_rounding(t, &w, &xq);
                let scalar = vec_dot_scalar(t, n, &w, &xq);
                let fast = vec_dot(t, n, &w, &xq);
                let ctx = format!(
                    "{t} n={n} random_bytes={random_bytes} seed={SEED:#x} ({})",
                    simd_name()
                );
                assert!(
                    (scalar - reference).abs() <= tol,
                    "{ctx}: scalar {scalar} vs dequantized {reference} (mag {mag})"
                );
                assert!(
                    (fast - scalar).abs() <= 1e-5 * mag,
                    "{ctx}: vec_dot {fast} vs scalar {scalar} (mag {mag})"
                );
            }
        }
    }
}

#[test]
fn dot_with_unquantized_activations_is_close() {
    // End to end: the quantized dot approximates the f32 dot of the original
    // activations (Q8 activations lose ~1/254 of the block range).
    let mut rng = ChaCha8Rng::seed_from_u64(SEED ^ 1);
    let mut xq = Vec::new();
    for t in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q4K,
        GgmlType::Q6K,
        GgmlType::F16,
    ] {
        let n = 4096;
        let w = weight_row(&mut rng, t, n, false);
        let x = f32_row(&mut rng, n);
        quantize_activation(t, &x, &mut xq);
        let wd = dequantized(t, &w, n);
        let exact: f32 = wd.iter().zip(&x).map(|(a, b)| a * b).sum();
        let mag: f32 = wd.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
        let got = vec_dot(t, n, &w, &xq);
        assert!(
            (got - exact).abs() <= 0.01 * mag,
            "{t} seed {:#x}: {got} vs {exact}",
            SEED ^ 1
        );
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_covers_every_type() {
    if !avx2::detected() {
        eprintln!("no AVX2 here; SIMD coverage not checked");
        return;
    }
    for t in GgmlType::ALL {
        assert!(has_simd(t), "{t} has no AVX2 kernel");
    }
    let expected = if avx2::vnni_detected() {
        "avx2+vnni"
    } else {
        "avx2"
    };
    assert_eq!(simd_name(), expected);
}

/// The integer levels of one legacy block (32 of them, in element order),
/// and its scale and min (0 for the types without one).
fn legacy_levels(t: GgmlType, b: &[u8]) -> ([i32; 32], f32, f32) {
    let f16 = |o: usize| half::f16::from_le_bytes([b[o], b[o + 1]]).to_f32();
    let qh = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let nib = |qs: &[u8], j: usize| {
        if j < 16 {
            qs[j] & 15
        } else {
            qs[j - 16] >> 4
        }
    };
    let mut q = [0i32; 32];
    let (mut m, mut hi, mut qs, mut bias) = (0.0, None, &b[2..], 0);
    match t {
        GgmlType::Q8_0 => {}
        GgmlType::Q4_0 => bias = 8,
        GgmlType::Q5_0 => (hi, qs, bias) = (Some(qh(2)), &b[6..], 16),
        GgmlType::Q4_1 => (m, qs) = (f16(2), &b[4..]),
        GgmlType::Q5_1 => (m, hi, qs) = (f16(2), Some(qh(4)), &b[8..]),
        _ => unreachable!("{t} is not a legacy type"),
    }
    for (j, v) in q.iter_mut().enumerate() {
        *v = match (t, hi) {
            (GgmlType::Q8_0, _) => qs[j] as i8 as i32,
            (_, None) => nib(qs, j) as i32 - bias,
            (_, Some(h)) => (nib(qs, j) as i32 | (((h >> j) & 1) << 4) as i32) - bias,
        };
    }
    (q, f16(0), m)
}

/// The one-row legacy kernels give, bit for bit, ggml's AVX2 `vec_dot`
/// order written out in scalar code: per block `d = dw * dx` and eight
/// lanes `acc[j] = fma(d, sum of elements 4j..4j+3, acc[j])`, the Q8_1
/// sum `mins = fma(mw, sx, mins)`, then `hsum_float_8(acc) + mins`.
#[cfg(target_arch = "x86_64")]
#[test]
fn legacy_kernels_follow_ggml_avx2_order_bit_for_bit() {
    if !avx2::detected() {
        eprintln!("no AVX2 here; the AVX2 order is not checked");
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(SEED ^ 6);
    let plain = avx2::kernels();
    for t in avx2::LEGACY {
        let xb = if activation_type(t) == ActivationType::Q8_1 {
            36
        } else {
            34
        };
        for n in lengths(t) {
            for random_bytes in [false, true] {
                let w = weight_row(&mut rng, t, n, random_bytes);
                let mut xq = Vec::new();
                quantize_activation(t, &f32_row(&mut rng, n), &mut xq);
                let (mut acc, mut mins) = ([0f32; 8], 0f32);
                for (bw, bx) in w.chunks(t.block_bytes()).zip(xq.chunks(xb)) {
                    let (q, dw, mw) = legacy_levels(t, bw);
                    let f16 = |o: usize| half::f16::from_le_bytes([bx[o], bx[o + 1]]).to_f32();
                    let d = dw * f16(0);
                    if xb == 36 {
                        mins = mw.mul_add(f16(2), mins);
                    }
                    let x = &bx[xb - 32..];
                    for (j, a) in acc.iter_mut().enumerate() {
                        let sum: i32 = (4 * j..4 * j + 4).map(|e| q[e] * x[e] as i8 as i32).sum();
                        *a = d.mul_add(sum as f32, *a);
                    }
                }
                let h: [f32; 4] = std::array::from_fn(|k| acc[k] + acc[k + 4]);
                let expected = (h[0] + h[2]) + (h[1] + h[3]) + mins;
                let ctx = format!("{t} n={n} random_bytes={random_bytes}");
                let find = |k: &[(GgmlType, DotFn)]| k.iter().find(|e| e.0 == t).unwrap().1;
                // SAFETY: AVX2 is there; the lengths are one row's.
                let got = unsafe { find(&plain)(n, &w, &xq) };
                assert_eq!(got.to_bits(), expected.to_bits(), "{ctx}: plain AVX2");
                let got = vec_dot(t, n, &w, &xq);
                assert_eq!(
                    got.to_bits(),
                    expected.to_bits(),
                    "{ctx}: vec_dot ({})",
                    simd_name()
                );
            }
        }
    }
}

/// The VNNI loops of the legacy types give the plain AVX2 loops' bits, one
/// row and four tokens at a time: a box without VNNI runs the plain ones.
#[cfg(target_arch = "x86_64")]
#[test]
fn vnni_and_plain_avx2_kernels_give_the_same_bits() {
    if !avx2::vnni_detected() {
        eprintln!("no AVX-512 VNNI here: only the plain AVX2 kernels run (checked above)");
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(SEED ^ 5);
    let find = |k: &[(GgmlType, DotFn)], t| k.iter().find(|e| e.0 == t).unwrap().1;
    let find_x4 = |k: &[(GgmlType, DotFnX4)], t| k.iter().find(|e| e.0 == t).unwrap().1;
    let (plain, vnni) = (avx2::kernels(), avx2::kernels_vnni());
    let (plain_x4, vnni_x4) = (avx2::kernels_x4(), avx2::kernels_x4_vnni());
    for t in avx2::LEGACY {
        for n in lengths(t) {
            for random_bytes in [false, true] {
                let (w, xq) = rows_and_tokens(&mut rng, t, n, random_bytes);
                let xs = std::array::from_fn(|k| &xq[k][..]);
                // SAFETY: VNNI (so AVX2) is there; the lengths are one row's.
                let (a, b, a4, b4) = unsafe {
                    (
                        find(&plain, t)(n, &w, xs[0]),
                        find(&vnni, t)(n, &w, xs[0]),
                        find_x4(&plain_x4, t)(n, &w, xs),
                        find_x4(&vnni_x4, t)(n, &w, xs),
                    )
                };
                let ctx = format!("{t} n={n} random_bytes={random_bytes}");
                assert_eq!(a.to_bits(), b.to_bits(), "{ctx}: one row");
                assert_eq!(
                    a4.map(f32::to_bits),
                    b4.map(f32::to_bits),
                    "{ctx}: four tokens"
                );
                assert_eq!(a.to_bits(), a4[0].to_bits(), "{ctx}: one row against four");
            }
        }
    }
}

#[test]
#[should_panic(expected = "vec_dot")]
fn wrong_lengths_panic_with_a_message() {
    vec_dot(GgmlType::Q4_0, 64, &[0u8; 18], &[0u8; 68]);
}

/// Random weight rows and `TOKENS` quantized activation rows of type `t`.
fn rows_and_tokens(
    rng: &mut ChaCha8Rng,
    t: GgmlType,
    n: usize,
    random_bytes: bool,
) -> (Vec<u8>, Vec<Vec<u8>>) {
    let w = weight_row(rng, t, n, random_bytes);
    let xq = (0..TOKENS)
        .map(|_| {
            let mut b = Vec::new();
            quantize_activation(t, &f32_row(rng, n), &mut b);
            b
        })
        .collect();
    (w, xq)
}

#[test]
fn x4_kernels_give_vec_dot_bits() {
    let mut rng = ChaCha8Rng::seed_from_u64(SEED ^ 4);
    for t in GgmlType::ALL {
        // Q4_K's and Q2_K's groups of four follow ggml's gemm, not its gemv (below).
        if !has_x4(t) || t == GgmlType::Q4K || t == GgmlType::Q2K {
            continue;
        }
        for n in lengths(t) {
            for random_bytes in [false, true] {
                let (w, xq) = rows_and_tokens(&mut rng, t, n, random_bytes);
                let got = vec_dot_x4(t, n, &w, std::array::from_fn(|k| &xq[k][..])).unwrap();
                for (k, x) in xq.iter().enumerate() {
                    let one = vec_dot(t, n, &w, x);
                    assert_eq!(
                        got[k].to_bits(),
                        one.to_bits(),
                        "{t} n={n} token {k} random_bytes={random_bytes} seed={:#x}",
                        SEED ^ 4
                    );
                }
            }
        }
    }
}

/// One Q4_K super-block against a Q8_K block: per 64-element chunk (sum of
/// scale * level * q8, sum of min * bsum), exact; then d, dmin and dy.
type Q4KBlock = ([(i32, i32); 4], f32, f32, f32);

/// The [`Q4KBlock`]s of a Q4_K row against a Q8_K row.
fn q4_k_chunks(n: usize, w: &[u8], x: &[u8]) -> Vec<Q4KBlock> {
    use strata_model::quant::k_quants::scale_min_k4;
    (0..n / 256)
        .map(|i| {
            let (b, bx) = (&w[i * 144..(i + 1) * 144], &x[i * 292..(i + 1) * 292]);
            let q8 = |e: usize| bx[4 + e] as i8 as i32;
            let chunks = std::array::from_fn(|j| {
                let mut si = 0;
                let mut sm = 0;
                for half in 0..2 {
                    let (sc, m) = scale_min_k4(2 * j + half, &b[4..16]);
                    let mut dot = 0;
                    let mut bsum = 0;
                    for l in 0..32 {
                        let byte = b[16 + 32 * j + l];
                        let level = if half == 0 { byte & 15 } else { byte >> 4 } as i32;
                        dot += level * q8(64 * j + 32 * half + l);
                        bsum += q8(64 * j + 32 * half + l);
                    }
                    si += sc as i32 * dot;
                    sm += m as i32 * bsum;
                }
                (si, sm)
            });
            let f16 = |at: usize| half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32();
            let dy = f32::from_le_bytes([bx[0], bx[1], bx[2], bx[3]]);
            (chunks, f16(0), f16(2), dy)
        })
        .collect()
}

/// Q4_K follows llama.cpp's x86 repacked kernels (the weights it repacks):
/// one token per super-block fused multiply-add (`ggml_gemv_q4_K_8x8_q8_K`),
/// four tokens per 64-element chunk (`ggml_gemm_q4_K_8x8_q8_K`). Written out
/// here in scalar code, which the SIMD kernels must give bit for bit.
#[cfg(target_arch = "x86_64")]
#[test]
fn q4_k_follows_ggml_repacked_order() {
    if !avx2::detected() {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(SEED ^ 9);
    let t = GgmlType::Q4K;
    for n in lengths(t) {
        for random_bytes in [false, true] {
            let (w, xq) = rows_and_tokens(&mut rng, t, n, random_bytes);
            let x4 = vec_dot_x4(t, n, &w, std::array::from_fn(|k| &xq[k][..])).unwrap();
            for (k, x) in xq.iter().enumerate() {
                let (mut gemv, mut gemv_m, mut gemm, mut gemm_m) = (0f32, 0f32, 0f32, 0f32);
                for (chunks, d, dmin, dy) in q4_k_chunks(n, &w, x) {
                    let (si, sm) = chunks.iter().fold((0, 0), |a, c| (a.0 + c.0, a.1 + c.1));
                    gemv = (si as f32).mul_add(d * dy, gemv);
                    gemv_m = (sm as f32).mul_add(dmin * dy, gemv_m);
                    for (si, sm) in chunks {
                        gemm = (si as f32).mul_add(d * dy, gemm);
                        gemm_m = (sm as f32).mul_add(dmin * dy, gemm_m);
                    }
                }
                let ctx = format!("n={n} token {k} random_bytes={random_bytes}");
                assert_eq!(
                    vec_dot(t, n, &w, x).to_bits(),
                    (gemv - gemv_m).to_bits(),
                    "gemv {ctx}"
                );
                assert_eq!(x4[k].to_bits(), (gemm - gemm_m).to_bits(), "gemm {ctx}");
            }
        }
    }
}

/// Q6_K in batches of 8+ follows llama.cpp's tiled matmul: per super-block
/// `acc = fma(sumi * d, dy, acc)` on the exact integer sum.
#[test]
fn q6_k_tiled_follows_ggml_order() {
    let t = GgmlType::Q6K;
    if RowDot::new(t, 256).tiled().is_none() {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(SEED ^ 10);
    for n in lengths(t) {
        let tiled = RowDot::new(t, n).tiled().expect("tiled kernel");
        for random_bytes in [false, true] {
            let (w, xq) = rows_and_tokens(&mut rng, t, n, random_bytes);
            let got = tiled.dot_x4(&w, std::array::from_fn(|k| &xq[k][..]));
            for (k, x) in xq.iter().enumerate() {
                let mut want = 0f32;
                for i in 0..n / 256 {
                    let (b, bx) = (&w[i * 210..(i + 1) * 210], &x[i * 292..(i + 1) * 292]);
                    let mut levels = vec![0f32; 256];
                    dequantize_row(t, b, &mut levels).unwrap();
                    let d = half::f16::from_le_bytes([b[208], b[209]]).to_f32();
                    // dequantized = d * scale * (q - 32): divide d back out (exact integers).
                    let sumi: i64 = (0..256)
                        .map(|e| (levels[e] / d).round() as i64 * bx[4 + e] as i8 as i64)
                        .sum();
                    let dy = f32::from_le_bytes([bx[0], bx[1], bx[2], bx[3]]);
                    want = (sumi as f32 * d).mul_add(dy, want);
                }
                assert_eq!(
                    got[k].to_bits(),
                    want.to_bits(),
                    "n={n} token {k} random_bytes={random_bytes}"
                );
            }
        }
    }
}

#[test]
fn simd_activation_quantizer_gives_portable_bytes() {
    let mut rng = ChaCha8Rng::seed_from_u64(SEED ^ 8);
    // Exact halves (amax 127 makes the scale 1), zeros, and random rows at many scales.
    let mut rows: Vec<Vec<f32>> = vec![
        (0..256)
            .map(|i| {
                if i == 0 {
                    127.0
                } else {
                    ((i % 64) as f32 - 32.0) + 0.5
                }
            })
            .collect(),
        (0..256)
            .map(|i| {
                if i == 5 {
                    -127.0
                } else {
                    -((i % 64) as f32 / 2.0)
                }
            })
            .collect(),
        vec![0.0; 256],
        (0..256)
            .map(|i| if i % 2 == 0 { -0.0 } else { 0.0 })
            .collect(),
    ];
    // Ties for the largest magnitude (the first one sets the sign of the Q8_K scale).
    rows.push(
        (0..256)
            .map(|i| {
                if i == 3 {
                    2.0
                } else if i == 9 {
                    -2.0
                } else {
                    (i as f32 - 128.0) / 100.0
                }
            })
            .collect(),
    );
    rows.push(
        (0..256)
            .map(|i| {
                if i == 3 {
                    -2.0
                } else if i == 9 {
                    2.0
                } else {
                    (i as f32) / 200.0
                }
            })
            .collect(),
    );
    rows.push((0..256).map(|i| (i % 7) as f32 - 3.0).collect());
    for _ in 0..200 {
        let n = 256 * rng.random_range(1..5);
        let scale = 10f32.powi(rng.random_range(-6..4));
        rows.push(
            (0..n)
                .map(|_| rng.random_range(-1.0f32..1.0) * scale)
                .collect(),
        );
    }
    for (i, x) in rows.iter().enumerate() {
        for (w, act) in [
            (GgmlType::Q4_0, GgmlType::Q8_0),
            (GgmlType::Q4_1, GgmlType::Q8_1),
            (GgmlType::Q4K, GgmlType::Q8K),
        ] {
            if x.len() % w.block_elems() != 0 {
                continue;
            }
            let mut want = vec![0u8; activation_row_bytes(w, x.len())];
            if act == GgmlType::Q8K {
                quantize_row(act, x, &mut want).unwrap();
            } else {
                scalar::quantize_q8(x, &mut want, act == GgmlType::Q8_1);
            }
            let mut got = vec![0u8; want.len()];
            quantize_activation_into(w, x, &mut got);
            assert_eq!(
                got,
                want,
                "{act} row {i} seed {:#x} ({})",
                SEED ^ 8,
                simd_name()
            );
        }
    }
}

/// The NEON kernels reuse the scalar kernels' f32 arithmetic over vector
/// integer dots: the same bits (run under qemu by scripts/test-aarch64.sh).
#[cfg(target_arch = "aarch64")]
#[test]
fn neon_kernels_give_scalar_bits() {
    let mut rng = ChaCha8Rng::seed_from_u64(SEED ^ 11);
    let mut xq = Vec::new();
    let mut covered = 0;
    for t in GgmlType::ALL {
        if !has_simd(t) {
            continue;
        }
        covered += 1;
        for n in lengths(t) {
            for random_bytes in [false, true] {
                let w = weight_row(&mut rng, t, n, random_bytes);
                quantize_activation(t, &f32_row(&mut rng, n), &mut xq);
                let (fast, slow) = (vec_dot(t, n, &w, &xq), vec_dot_scalar(t, n, &w, &xq));
                assert_eq!(
                    fast.to_bits(),
                    slow.to_bits(),
                    "{t} n={n} random_bytes={random_bytes}"
                );
            }
        }
    }
    assert_eq!(simd_name(), "neon");
    assert!(covered >= 7, "NEON kernels for {covered} types");
}

/// Q5_K follows ggml's AVX2 `ggml_vec_dot_q5_K_q8_K` (8 lanes of 4-byte
/// groups, `fma(dy * d, lane)` per super-block, mins fused into one scalar)
/// for up to 7 tokens, and ggml's tiled matmul for 8+: written out here in
/// scalar code, which the SIMD kernels must give bit for bit.
#[cfg(target_arch = "x86_64")]
#[test]
fn q5_k_follows_ggml_orders() {
    use strata_model::quant::k_quants::scale_min_k4;
    if !avx2::detected() {
        return;
    }
    let t = GgmlType::Q5K;
    let mut rng = ChaCha8Rng::seed_from_u64(SEED ^ 12);
    for n in lengths(t) {
        let tiled = RowDot::new(t, n).tiled().expect("Q5_K has a tiled kernel");
        for random_bytes in [false, true] {
            let (w, xq) = rows_and_tokens(&mut rng, t, n, random_bytes);
            let x4 = vec_dot_x4(t, n, &w, std::array::from_fn(|k| &xq[k][..])).unwrap();
            let x4_tiled = tiled.dot_x4(&w, std::array::from_fn(|k| &xq[k][..]));
            for (k, x) in xq.iter().enumerate() {
                let (mut lanes_acc, mut summs, mut tiled_acc) = ([0f32; 8], 0f32, 0f32);
                for i in 0..n / 256 {
                    let (b, bx) = (&w[i * 176..(i + 1) * 176], &x[i * 292..(i + 1) * 292]);
                    let q8 = |e: usize| bx[4 + e] as i8 as i32;
                    let bsum =
                        |g: usize| i16::from_le_bytes([bx[260 + 2 * g], bx[261 + 2 * g]]) as i32;
                    let (mut lanes, mut summ) = ([0i32; 8], 0i32);
                    for j in 0..4 {
                        let (sc1, m1) = scale_min_k4(2 * j, &b[4..16]);
                        let (sc2, m2) = scale_min_k4(2 * j + 1, &b[4..16]);
                        summ += m1 as i32 * (bsum(4 * j) + bsum(4 * j + 1))
                            + m2 as i32 * (bsum(4 * j + 2) + bsum(4 * j + 3));
                        for l in 0..32 {
                            let (q, h) = (b[48 + 32 * j + l], b[16 + l]);
                            let lo = (q & 15) as i32 | (((h >> (2 * j)) & 1) as i32) << 4;
                            let hi = (q >> 4) as i32 | (((h >> (2 * j + 1)) & 1) as i32) << 4;
                            lanes[l / 4] += sc1 as i32 * lo * q8(64 * j + l)
                                + sc2 as i32 * hi * q8(64 * j + 32 + l);
                        }
                    }
                    let f16 = |at: usize| half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32();
                    let dy = f32::from_le_bytes([bx[0], bx[1], bx[2], bx[3]]);
                    for (a, &l) in lanes_acc.iter_mut().zip(&lanes) {
                        *a = (dy * f16(0)).mul_add(l as f32, *a);
                    }
                    summs = (-dy * f16(2)).mul_add(summ as f32, summs);
                    let sumi: i32 = lanes.iter().sum();
                    let r = (-f16(2)).mul_add(summ as f32, sumi as f32 * f16(0));
                    tiled_acc = r.mul_add(dy, tiled_acc);
                }
                let r: [f32; 4] = std::array::from_fn(|i| lanes_acc[i + 4] + lanes_acc[i]);
                let want = ((r[0] + r[2]) + (r[1] + r[3])) + summs;
                let ctx = format!("n={n} token {k} random_bytes={random_bytes}");
                assert_eq!(
                    vec_dot(t, n, &w, x).to_bits(),
                    want.to_bits(),
                    "vec_dot {ctx}"
                );
                assert_eq!(x4[k].to_bits(), want.to_bits(), "x4 {ctx}");
                assert_eq!(x4_tiled[k].to_bits(), tiled_acc.to_bits(), "tiled {ctx}");
            }
        }
    }
}

/// Q2_K follows llama.cpp's AVX-512 repacked kernels: one fused
/// multiply-add per super-block for a lone token
/// (`ggml_gemv_q2_K_8x8_q8_K`), one per 128-element half for each group of
/// four (`ggml_gemm_q2_K_8x8_q8_K`); written out in scalar code here.
#[cfg(target_arch = "x86_64")]
#[test]
fn q2_k_follows_ggml_repacked_order() {
    if !avx2::detected() {
        return;
    }
    let t = GgmlType::Q2K;
    let mut rng = ChaCha8Rng::seed_from_u64(SEED ^ 13);
    for n in lengths(t) {
        for random_bytes in [false, true] {
            let (w, xq) = rows_and_tokens(&mut rng, t, n, random_bytes);
            let x4 = vec_dot_x4(t, n, &w, std::array::from_fn(|k| &xq[k][..])).unwrap();
            for (k, x) in xq.iter().enumerate() {
                let (mut gemv, mut gemv_m, mut gemm, mut gemm_m) = (0f32, 0f32, 0f32, 0f32);
                for i in 0..n / 256 {
                    let (b, bx) = (&w[i * 84..(i + 1) * 84], &x[i * 292..(i + 1) * 292]);
                    let q8 = |e: usize| bx[4 + e] as i8 as i32;
                    let halves: [(i32, i32); 2] = std::array::from_fn(|h| {
                        let (mut si, mut sm) = (0, 0);
                        for sub in 8 * h..8 * h + 8 {
                            let (sc, m) = ((b[sub] & 15) as i32, (b[sub] >> 4) as i32);
                            // Sub-block `sub`: 16 elements of 2-bit levels, 4 per byte.
                            let (e0, shift) = (16 * sub, 2 * ((sub % 8) / 2));
                            for e in e0..e0 + 16 {
                                let byte = b[16 + 32 * (e / 128) + e % 32];
                                si += sc * ((byte >> shift) & 3) as i32 * q8(e);
                                sm += m * q8(e);
                            }
                        }
                        (si, sm)
                    });
                    let f16 = |at: usize| half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32();
                    let dy = f32::from_le_bytes([bx[0], bx[1], bx[2], bx[3]]);
                    let (d, dmin) = (f16(80) * dy, f16(82) * dy);
                    gemv = ((halves[0].0 + halves[1].0) as f32).mul_add(d, gemv);
                    gemv_m = ((halves[0].1 + halves[1].1) as f32).mul_add(dmin, gemv_m);
                    for (si, sm) in halves {
                        gemm = (si as f32).mul_add(d, gemm);
                        gemm_m = (sm as f32).mul_add(dmin, gemm_m);
                    }
                }
                let ctx = format!("n={n} token {k} random_bytes={random_bytes}");
                assert_eq!(
                    vec_dot(t, n, &w, x).to_bits(),
                    (gemv - gemv_m).to_bits(),
                    "gemv {ctx}"
                );
                assert_eq!(x4[k].to_bits(), (gemm - gemm_m).to_bits(), "gemm {ctx}");
            }
        }
    }
}

/// MXFP4 follows llama.cpp's repacked x86 kernels
/// (`gemv/gemm_q4_b32_8x8_q8_0_lut_avx`): per block, the exact integer dot
/// times `e8m0_half(e) * d_y`, fused into one accumulator in block order.
/// Written out here from the dequantized levels; every kernel (scalar,
/// AVX2, AVX2 x4) must give it bit for bit, for block counts that are and
/// are not multiples of the AVX2 kernel's groups of four.
#[test]
fn mxfp4_follows_ggml_repacked_order() {
    use strata_model::quant::mxfp4::e8m0_to_f32_half;
    let t = GgmlType::MXFP4;
    let mut rng = ChaCha8Rng::seed_from_u64(SEED ^ 39);
    for n in [32, 64, 96, 160, 224, 2880] {
        for random_bytes in [false, true] {
            let w = weight_row(&mut rng, t, n, random_bytes);
            let xs: Vec<Vec<u8>> = (0..TOKENS)
                .map(|_| {
                    let mut xq = Vec::new();
                    quantize_activation(t, &f32_row(&mut rng, n), &mut xq);
                    xq
                })
                .collect();
            let wd = dequantized(t, &w, n);
            let expected: Vec<f32> = xs
                .iter()
                .map(|xq| {
                    let mut acc = 0f32;
                    for (i, (bw, bx)) in w.chunks(17).zip(xq.chunks(34)).enumerate() {
                        let d = e8m0_to_f32_half(bw[0]);
                        // Levels back from the dequantized weights (exact: powers of two).
                        let sumi: i32 = (0..32)
                            .map(|j| (wd[32 * i + j] / d) as i32 * bx[2 + j] as i8 as i32)
                            .sum();
                        let dy = half::f16::from_le_bytes([bx[0], bx[1]]).to_f32();
                        acc = (sumi as f32).mul_add(d * dy, acc);
                    }
                    acc
                })
                .collect();
            let ctx = format!("n={n} random_bytes={random_bytes} seed={:#x}", SEED ^ 39);
            for (k, xq) in xs.iter().enumerate() {
                let got = [vec_dot(t, n, &w, xq), vec_dot_scalar(t, n, &w, xq)];
                for g in got {
                    assert_eq!(
                        g.to_bits(),
                        expected[k].to_bits(),
                        "{ctx}: {g} vs {}",
                        expected[k]
                    );
                }
            }
            let four: [&[u8]; TOKENS] = std::array::from_fn(|k| xs[k].as_slice());
            if let Some(got) = vec_dot_x4(t, n, &w, four) {
                for (g, e) in got.iter().zip(&expected) {
                    assert_eq!(g.to_bits(), e.to_bits(), "{ctx} x4: {g} vs {e}");
                }
            }
        }
    }
}
