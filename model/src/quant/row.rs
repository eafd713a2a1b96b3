//! Row-level entry points: length checks, then block by block.

use super::{k_quants as k, legacy as l, mxfp4, GgmlType};

/// Why a row could not be (de)quantized.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantError {
    #[error("{dtype}: row of {elems} elements is not a whole number of {block}-element blocks")]
    PartialBlock {
        dtype: GgmlType,
        elems: usize,
        block: usize,
    },
    #[error("{dtype}: {elems} elements need {expected} bytes, got {got}")]
    ByteLength {
        dtype: GgmlType,
        elems: usize,
        expected: usize,
        got: usize,
    },
    #[error("{dtype}: no quantizer for this type")]
    NoQuantizer { dtype: GgmlType },
}

type DequantBlock = fn(&[u8], &mut [f32]);
type QuantBlock = fn(&[f32], &mut [u8]);

fn dequant_block(dtype: GgmlType) -> DequantBlock {
    match dtype {
        GgmlType::F32 => |b, y| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => |b, y| y[0] = half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
        GgmlType::BF16 => |b, y| y[0] = half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        GgmlType::Q4_0 => l::dequantize_q4_0,
        GgmlType::Q4_1 => l::dequantize_q4_1,
        GgmlType::Q5_0 => l::dequantize_q5_0,
        GgmlType::Q5_1 => l::dequantize_q5_1,
        GgmlType::Q8_0 => l::dequantize_q8_0,
        GgmlType::Q8_1 => l::dequantize_q8_1,
        GgmlType::Q2K => k::dequantize_q2_k,
        GgmlType::Q3K => k::dequantize_q3_k,
        GgmlType::Q4K => k::dequantize_q4_k,
        GgmlType::Q5K => k::dequantize_q5_k,
        GgmlType::Q6K => k::dequantize_q6_k,
        GgmlType::Q8K => k::dequantize_q8_k,
        GgmlType::MXFP4 => mxfp4::dequantize_mxfp4,
    }
}

fn quant_block(dtype: GgmlType) -> QuantBlock {
    match dtype {
        GgmlType::F32 => |x, b| b.copy_from_slice(&x[0].to_le_bytes()),
        GgmlType::F16 => |x, b| b.copy_from_slice(&half::f16::from_f32(x[0]).to_le_bytes()),
        GgmlType::BF16 => |x, b| b.copy_from_slice(&half::bf16::from_f32(x[0]).to_le_bytes()),
        GgmlType::Q4_0 => l::quantize_q4_0,
        GgmlType::Q4_1 => l::quantize_q4_1,
        GgmlType::Q5_0 => l::quantize_q5_0,
        GgmlType::Q5_1 => l::quantize_q5_1,
        GgmlType::Q8_0 => l::quantize_q8_0,
        GgmlType::Q8_1 => l::quantize_q8_1,
        GgmlType::Q2K => k::quantize_q2_k,
        GgmlType::Q3K => k::quantize_q3_k,
        GgmlType::Q4K => k::quantize_q4_k,
        GgmlType::Q5K => k::quantize_q5_k,
        GgmlType::Q6K => k::quantize_q6_k,
        GgmlType::Q8K => k::quantize_q8_k,
        GgmlType::MXFP4 => mxfp4::quantize_mxfp4,
    }
}

/// Checks that `elems` is whole blocks and `bytes` is their exact size.
fn check(dtype: GgmlType, elems: usize, bytes: usize) -> Result<usize, QuantError> {
    let block = dtype.block_elems();
    if elems % block != 0 {
        return Err(QuantError::PartialBlock {
            dtype,
            elems,
            block,
        });
    }
    let blocks = elems / block;
    let expected = blocks * dtype.block_bytes();
    if bytes != expected {
        return Err(QuantError::ByteLength {
            dtype,
            elems,
            expected,
            got: bytes,
        });
    }
    Ok(blocks)
}

/// Dequantizes a row of raw GGUF bytes `src` into `dst` (its length is the
/// element count).
pub fn dequantize_row(dtype: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    check(dtype, dst.len(), src.len())?;
    let f = dequant_block(dtype);
    let (be, bb) = (dtype.block_elems(), dtype.block_bytes());
    for (b, y) in src.chunks_exact(bb).zip(dst.chunks_exact_mut(be)) {
        f(b, y);
    }
    Ok(())
}

/// Quantizes `src` into `dst` (exactly `dtype.row_bytes(src.len())` bytes).
/// Q8_0, Q8_1, Q8_K, Q4_0..Q5_1 and MXFP4 follow ggml's reference quantizers; the
/// other K types use a simple range fit (valid blocks, not ggml's
/// error-minimizing search).
pub fn quantize_row(dtype: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    check(dtype, src.len(), dst.len())?;
    let f = quant_block(dtype);
    let (be, bb) = (dtype.block_elems(), dtype.block_bytes());
    for (x, b) in src.chunks_exact(be).zip(dst.chunks_exact_mut(bb)) {
        f(x, b);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn length_errors_are_reported() {
        let mut y = [0.0f32; 32];
        assert_eq!(
            dequantize_row(GgmlType::Q4_0, &[0u8; 17], &mut y),
            Err(QuantError::ByteLength {
                dtype: GgmlType::Q4_0,
                elems: 32,
                expected: 18,
                got: 17
            })
        );
        let mut y = [0.0f32; 31];
        assert!(matches!(
            dequantize_row(GgmlType::Q4_0, &[0u8; 18], &mut y),
            Err(QuantError::PartialBlock { .. })
        ));
        assert!(quantize_row(GgmlType::Q4K, &[0.0; 256], &mut [0u8; 143]).is_err());
    }

    /// Round trip of every type: error bounded by a fraction of the block's
    /// range (per type: the quantizer's step size).
    #[test]
    fn round_trip_every_type() {
        let seed = 0x5eed_u64;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        for dtype in GgmlType::ALL {
            let n = 512;
            let x: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let mut q = vec![0u8; dtype.row_bytes(n as u64).unwrap() as usize];
            quantize_row(dtype, &x, &mut q).unwrap();
            let mut y = vec![0.0f32; n];
            dequantize_row(dtype, &q, &mut y).unwrap();
            let tol = match dtype {
                GgmlType::F32 => 0.0,
                GgmlType::F16 => 1e-3,
                GgmlType::BF16 => 4e-3,
                GgmlType::Q8_0 | GgmlType::Q8_1 | GgmlType::Q8K => 0.01,
                GgmlType::Q6K => 0.04,
                // Q4_0/Q5_0 put the largest magnitude on -8d/-16d, so the
                // opposite side clips one step early.
                GgmlType::Q5_0 => 0.07,
                GgmlType::Q4_0 => 0.14,
                GgmlType::Q5_1 | GgmlType::Q5K => 0.06,
                GgmlType::Q4_1 | GgmlType::Q4K => 0.12,
                GgmlType::Q3K => 0.3,
                GgmlType::Q2K => 0.5,
                // ggml's exponent puts the top level (6 * 2^(e-127)) below
                // amax by up to a quarter of it: |x| < 1 gives e = 124 at
                // worst (top level 0.75), so values near 1 clip by 0.25.
                GgmlType::MXFP4 => 0.25,
            };
            for (i, (a, b)) in x.iter().zip(&y).enumerate() {
                assert!(
                    (a - b).abs() <= tol,
                    "{dtype} seed {seed:#x} elem {i}: {a} vs {b}"
                );
            }
        }
    }
}
