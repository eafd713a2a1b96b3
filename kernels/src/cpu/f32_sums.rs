//! ggml-cpu's f32 sums, in the order its AVX-512 build (GCC 12, `-O3
//! -march=native`) adds them: `ggml_vec_dot_f32`, llamafile's tinyBLAS
//! for F32 matrices, GCC's scalar `sum += a * b` loops, and
//! `_mm512_reduce_add_ps`. Written as plain Rust so that every machine
//! (AVX2, ARM) gives the same bits.

/// `_mm512_reduce_add_ps` as GCC implements it: halves added pairwise
/// (512 -> 256 -> 128 bits), then lanes (0+2, 1+3), then those two.
#[inline(always)]
pub(crate) fn reduce_add_16(v: &[f32]) -> f32 {
    let h8: [f32; 8] = std::array::from_fn(|i| v[i] + v[i + 8]);
    let h4: [f32; 4] = std::array::from_fn(|i| h8[i] + h8[i + 4]);
    (h4[0] + h4[2]) + (h4[1] + h4[3])
}

/// `x · y` summed as ggml's AVX-512 `ggml_vec_dot_f32`: 64-value chunks
/// fused into 4 x 16 f32 lanes (`acc[j][l] += x[c + 16j + l] · y[…]`), the
/// four vectors added as `GGML_F32x16_REDUCE` does ((0 + 2) + (1 + 3)), the
/// 16 lanes reduced as GCC's `_mm512_reduce_add_ps`, then the leftover
/// products added to the f32 sum in order (`sumf += x[i]*y[i]`, as
/// [`sum_products_gcc`]). Below 64 values only the leftover loop runs.
#[inline(always)]
pub(crate) fn dot_f32_ggml(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len().min(y.len());
    let np = n & !63;
    let mut sum = 0f32;
    if np > 0 {
        let mut acc = [[0f32; 16]; 4];
        for c in (0..np).step_by(64) {
            for (j, a) in acc.iter_mut().enumerate() {
                for (l, a) in a.iter_mut().enumerate() {
                    let i = c + 16 * j + l;
                    *a = x[i].mul_add(y[i], *a);
                }
            }
        }
        let v: [f32; 16] =
            std::array::from_fn(|l| (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]));
        sum = reduce_add_16(&v);
    }
    sum_products_gcc(n - np, sum, |i| (x[np + i], y[np + i]))
}

/// `sum + Σ_{i < n} a_i·b_i`, left to right, as GCC 12 `-O3 -march=native`
/// compiles ggml's scalar loops `sum += a[i]*b[i]` (read in the reference
/// `libggml-cpu.so`: `ggml_compute_forward_ssm_conv`, `ggml_vec_dot_f32`):
/// it vectorizes the products 8 and then 4 at a time (`vmulps`, each
/// product rounded) and adds them to the sum one by one in order
/// (`vaddss`), and fuses the last `n mod 4` terms (`vfmadd231ss`). So the
/// first `n − n mod 4` products are rounded before the add, the rest not.
#[inline(always)]
pub(crate) fn sum_products_gcc(n: usize, mut sum: f32, term: impl Fn(usize) -> (f32, f32)) -> f32 {
    let unfused = n & !3;
    for i in 0..unfused {
        let (a, b) = term(i);
        sum += a * b;
    }
    for i in unfused..n {
        let (a, b) = term(i);
        sum = a.mul_add(b, sum);
    }
    sum
}

/// One output of llamafile's tinyBLAS F32 matmul (`sgemm.cpp`,
/// `tinyBLAS<16, __m512, ...>::gemm_bloc`), which ggml-cpu takes for F32
/// weights whose rows are a multiple of 16 long: 16 lanes, one fused
/// multiply-add per element, then `_mm512_reduce_add_ps` (`hsum`). `w` and
/// `x` are little-endian f32 bytes.
#[inline(always)]
pub(crate) fn dot_f32_tinyblas(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let at = |b: &[u8], i: usize| {
        f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
    };
    let mut acc = [0f32; 16];
    for c in (0..n).step_by(16) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a = at(w, c + l).mul_add(at(x, c + l), *a);
        }
    }
    reduce_add_16(&acc)
}
