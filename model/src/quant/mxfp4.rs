//! MXFP4 (OCP microscaling FP4, the type of gpt-oss's experts): blocks of
//! 32 E2M1 values sharing one E8M0 scale (`block_mxfp4` in ggml-common.h),
//! its dequantization and ggml's reference quantizer
//! (`quantize_row_mxfp4_ref` / `dequantize_row_mxfp4` in ggml-quants.c).
//!
//! Block layout (17 bytes): `e: u8` (E8M0 exponent), `qs: [u8; 16]`; the
//! low nibbles are elements 0..16, the high nibbles elements 16..32. Each
//! nibble indexes [`KVALUES`] (the E2M1 values, doubled so they are
//! integers), and x = kvalue * 2^(e - 128), i.e. E2M1 value * 2^(e - 127).

/// Elements per block.
pub const QK: usize = 32;

/// Bytes per block: the exponent, then 16 bytes of nibbles.
pub const BLOCK_BYTES: usize = 17;

/// E2M1 values doubled (`kvalues_mxfp4` / `kvalues_fp4`): nibble -> level.
pub const KVALUES: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// `ggml_e8m0_to_fp32_half`: 2^(e - 128), half the E8M0 value, so that it
/// scales the doubled [`KVALUES`]. Exponents 0 and 1 give the subnormals
/// 2^-128 and 2^-127; 255 (NaN in the MX spec) gives 2^127, as in ggml.
#[inline]
pub fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        (e as u32 - 1) << 23
    };
    f32::from_bits(bits)
}

/// `block_mxfp4`: x = KVALUES[nibble] * e8m0_half(e).
pub fn dequantize_mxfp4(b: &[u8], y: &mut [f32]) {
    let d = e8m0_to_f32_half(b[0]);
    let qs = &b[1..BLOCK_BYTES];
    for j in 0..16 {
        y[j] = KVALUES[(qs[j] & 0xF) as usize] as f32 * d;
        y[j + 16] = KVALUES[(qs[j] >> 4) as usize] as f32 * d;
    }
}

/// `best_index_mxfp4`: the first nibble whose level times `d` is nearest
/// `x` (ties keep the lower index, so +0 wins over -0).
fn best_index(x: f32, d: f32) -> u8 {
    let mut best = 0u8;
    let mut best_err = (KVALUES[0] as f32 * d - x).abs();
    for (i, &k) in KVALUES.iter().enumerate().skip(1) {
        let err = (k as f32 * d - x).abs();
        if err < best_err {
            best = i as u8;
            best_err = err;
        }
    }
    best
}

/// The exponent byte `quantize_row_mxfp4_ref` picks for a block whose
/// largest magnitude is `amax`: `(uint8_t)(floorf(log2f(amax)) - 2 + 127)`,
/// so the largest level (6.0, doubled 12) covers amax. ggml converts the
/// float through a 32-bit int (x86 `cvttss2si`), so the (never seen in
/// practice) amax < 2^-125 wraps around as it does there.
pub fn block_exponent(amax: f32) -> u8 {
    if amax > 0.0 {
        (amax.log2().floor() - 2.0 + 127.0) as i32 as u8
    } else {
        0
    }
}

/// `quantize_row_mxfp4_ref` for one block.
pub fn quantize_mxfp4(x: &[f32], b: &mut [u8]) {
    let amax = x[..QK]
        .iter()
        .fold(0.0f32, |a, v| if a < v.abs() { v.abs() } else { a });
    let e = block_exponent(amax);
    let d = e8m0_to_f32_half(e);
    b[0] = e;
    for j in 0..16 {
        b[1 + j] = best_index(x[j], d) | (best_index(x[j + 16], d) << 4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e8m0_half_is_two_to_e_minus_128() {
        assert_eq!(e8m0_to_f32_half(128), 1.0);
        assert_eq!(e8m0_to_f32_half(127), 0.5);
        assert_eq!(e8m0_to_f32_half(2), 2f32.powi(-126));
        assert_eq!(e8m0_to_f32_half(1), 2f32.powi(-127));
        assert_eq!(e8m0_to_f32_half(0), 2f32.powi(-128));
        assert_eq!(e8m0_to_f32_half(254), 2f32.powi(126));
    }

    #[test]
    fn exponent_makes_the_largest_level_cover_amax() {
        // amax in [4, 8): floor(log2) = 2, e = 127, d = 0.5, top level 12 * 0.5 = 6.
        assert_eq!(block_exponent(6.0), 127);
        assert_eq!(block_exponent(4.0), 127);
        assert_eq!(block_exponent(7.99), 127);
        assert_eq!(block_exponent(8.0), 128);
        assert_eq!(block_exponent(0.0), 0);
    }

    #[test]
    fn levels_quantize_exactly() {
        // Every E2M1 value at d = 0.5 (e = 127) is representable.
        let x: Vec<f32> = (0..QK).map(|i| KVALUES[i % 16] as f32 * 0.5).collect();
        let mut b = [0u8; BLOCK_BYTES];
        quantize_mxfp4(&x, &mut b);
        assert_eq!(b[0], 127);
        let mut y = [0f32; QK];
        dequantize_mxfp4(&b, &mut y);
        assert_eq!(x, y);
        // -0 quantizes to +0 (nibble 0: ties keep the first index).
        assert_eq!(b[1] & 0xF, 0);
    }
}
