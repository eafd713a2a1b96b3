//! Quantized dot products: activations quantized once per row, weights read in place.
//!
//! As in ggml, each weight type has an activation format (`vec_dot_type`):
//! Q8_0 for Q4_0/Q5_0/Q8_0/MXFP4, Q8_1 for Q4_1/Q5_1/Q8_1, Q8_K for the K-quants
//! and f32 for F32/F16/BF16. [`quantize_activation`] makes it once per
//! activation row; [`vec_dot`] then dots it with every weight row.
//!
//! A portable scalar kernel exists for every type ([`scalar`]); AVX2+FMA+F16C
//! kernels (x86-64, every type) are chosen once at run time when the CPU has
//! them; aarch64 runs NEON kernels for the common types (Q4_0, Q4_1, Q5_0,
//! Q5_1, Q8_0, Q4_K, Q6_K), which give the scalar kernels' bits. Other
//! targets run the scalar ones.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod mxfp4;
#[cfg(target_arch = "aarch64")]
mod neon;
pub mod scalar;
#[cfg(test)]
mod tests;

use std::sync::OnceLock;

use strata_model::quant::quantize_row;
use strata_model::GgmlType;

/// The format an activation row takes for dot products with a weight type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationType {
    F32,
    Q8_0,
    Q8_1,
    Q8K,
}

impl ActivationType {
    /// The GGML type of the quantized activation row (`F32` stays f32).
    pub fn ggml_type(self) -> GgmlType {
        match self {
            Self::F32 => GgmlType::F32,
            Self::Q8_0 => GgmlType::Q8_0,
            Self::Q8_1 => GgmlType::Q8_1,
            Self::Q8K => GgmlType::Q8K,
        }
    }
}

/// ggml's `vec_dot_type` of a weight type.
pub fn activation_type(weight: GgmlType) -> ActivationType {
    match weight {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => ActivationType::F32,
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::MXFP4 => ActivationType::Q8_0,
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q8_1 => ActivationType::Q8_1,
        GgmlType::Q2K
        | GgmlType::Q3K
        | GgmlType::Q4K
        | GgmlType::Q5K
        | GgmlType::Q6K
        | GgmlType::Q8K => ActivationType::Q8K,
    }
}

/// Quantizes one activation row (len a multiple of the weight's block) for dot products with rows of `weight`.
///
/// # Panics
/// When `x.len()` is not a whole number of the weight's blocks: the caller
/// checks row lengths once, at load time.
pub fn quantize_activation(weight: GgmlType, x: &[f32], out: &mut Vec<u8>) {
    assert!(
        x.len() % weight.block_elems() == 0,
        "{weight}: activation row of {} elements is not whole blocks",
        x.len()
    );
    out.clear();
    out.resize(activation_row_bytes(weight, x.len()), 0);
    quantize_activation_into(weight, x, out);
}

/// Bytes of one activation row of `n` elements for dot products with rows of `weight`.
pub fn activation_row_bytes(weight: GgmlType, n: usize) -> usize {
    activation_type(weight)
        .ggml_type()
        .row_bytes(n as u64)
        .map_or(0, |b| b as usize)
}

/// [`quantize_activation`] into a slice of [`activation_row_bytes`] bytes
/// (the same bytes), so callers can keep one buffer for many rows.
///
/// # Panics
/// As [`quantize_activation`], or when `out` has the wrong length.
pub fn quantize_activation_into(weight: GgmlType, x: &[f32], out: &mut [u8]) {
    assert!(
        x.len() % weight.block_elems() == 0,
        "{weight}: activation row of {} elements is not whole blocks",
        x.len()
    );
    assert_eq!(
        out.len(),
        activation_row_bytes(weight, x.len()),
        "{weight}: activation buffer length"
    );
    let act = activation_type(weight).ggml_type();
    if act == GgmlType::F32 {
        out.chunks_exact_mut(4)
            .zip(x)
            .for_each(|(o, v)| o.copy_from_slice(&v.to_le_bytes()));
        return;
    }
    if matches!(act, GgmlType::Q8_0 | GgmlType::Q8_1) {
        #[cfg(target_arch = "x86_64")]
        if kernels().simd_quantize {
            // SAFETY: AVX2/F16C detected; lengths checked above.
            unsafe { avx2::quantize_q8(x, out, act == GgmlType::Q8_1) };
            return;
        }
        scalar::quantize_q8(x, out, act == GgmlType::Q8_1);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if act == GgmlType::Q8K && kernels().simd_quantize {
        // SAFETY: as above.
        unsafe { avx2::quantize_q8_k(x, out) };
        return;
    }
    if let Err(e) = quantize_row(act, x, out) {
        panic!("{weight}: quantizing activations: {e}");
    }
}

/// Dot product of one weight row (raw GGUF bytes, `n` elements) with an activation row from `quantize_activation`.
///
/// # Panics
/// When the row lengths do not match `n` (a caller bug: they are checked at
/// load time). The check is one comparison per row and keeps the SIMD
/// kernels' unchecked loads in bounds.
pub fn vec_dot(weight: GgmlType, n: usize, w_row: &[u8], x: &[u8]) -> f32 {
    check_lengths(weight, n, w_row, x);
    let f = kernels().table[index(weight)];
    // SAFETY: the table holds a SIMD kernel only when its CPU features were
    // detected, and the lengths were checked above.
    unsafe { f(n, w_row, x) }
}

/// Activation rows that [`vec_dot_x4`] dots with one weight row at once.
pub const TOKENS: usize = 4;

/// From this many tokens, llama.cpp's CPU backend multiplies K-quant
/// weights (the types it does not repack) with its tiled kernel, whose
/// f32 rounding differs from its `vec_dot`; [`RowDot::tiled`] follows it.
pub const TILED_MIN_TOKENS: usize = 8;

/// One weight row against [`TOKENS`] activation rows: the same bits as
/// `TOKENS` calls of [`vec_dot`], with the weight row loaded and unpacked
/// once. `None` when this type has no such kernel on this CPU (then call
/// [`vec_dot`] per row).
///
/// # Panics
/// As [`vec_dot`], on mismatched lengths.
pub fn vec_dot_x4(
    weight: GgmlType,
    n: usize,
    w_row: &[u8],
    x: [&[u8]; TOKENS],
) -> Option<[f32; TOKENS]> {
    let f = kernels().table_x4[index(weight)]?;
    x.iter().for_each(|x| check_lengths(weight, n, w_row, x));
    // SAFETY: as in `vec_dot`.
    Some(unsafe { f(n, w_row, x) })
}

/// [`vec_dot`] and [`vec_dot_x4`] for one weight type and row length, with
/// the length arithmetic done once (matmul calls it for every row).
#[derive(Clone, Copy)]
pub struct RowDot {
    weight: GgmlType,
    n: usize,
    w_bytes: usize,
    x_bytes: usize,
    one: DotFn,
    x4: Option<DotFnX4>,
    tiled: Option<DotFnX4>,
}

impl RowDot {
    pub fn new(weight: GgmlType, n: usize) -> Self {
        let w_bytes = weight
            .row_bytes(n as u64)
            .map_or(usize::MAX, |b| b as usize);
        let x_bytes = activation_row_bytes(weight, n);
        assert!(
            n % weight.block_elems() == 0 && w_bytes != usize::MAX,
            "{weight} vec_dot: rows of {n} elements"
        );
        let k = kernels();
        RowDot {
            weight,
            n,
            w_bytes,
            x_bytes,
            one: k.table[index(weight)],
            x4: k.table_x4[index(weight)],
            tiled: k.table_tiled[index(weight)],
        }
    }

    /// The kernel for a `mul_mat` of `n_tok` tokens: ggml-cpu hands F32
    /// weights of a multiple of 16 columns to llamafile's sgemm from two
    /// tokens on (`llamafile_sgemm` returns early for one), in another
    /// order than `ggml_vec_dot_f32`.
    pub fn for_mul_mat(self, n_tok: usize) -> Self {
        let sgemm = self.weight == GgmlType::F32 && n_tok >= 2 && self.n.is_multiple_of(16);
        if sgemm {
            RowDot {
                one: kernels().f32_sgemm,
                ..self
            }
        } else {
            self
        }
    }

    /// This type's kernel for batches of [`TILED_MIN_TOKENS`] or more, if
    /// that order differs from [`RowDot::dot_x4`]'s.
    pub fn tiled(&self) -> Option<RowDotTiled> {
        self.tiled.map(|f| RowDotTiled { dot: *self, f })
    }

    pub fn has_x4(&self) -> bool {
        self.x4.is_some()
    }

    /// As [`vec_dot`].
    #[inline]
    pub fn dot(&self, w_row: &[u8], x: &[u8]) -> f32 {
        assert!(
            w_row.len() == self.w_bytes && x.len() == self.x_bytes,
            "vec_dot: row lengths"
        );
        // SAFETY: as in `vec_dot`: kernels are in the table only when detected; lengths checked.
        unsafe { (self.one)(self.n, w_row, x) }
    }

    /// As [`vec_dot_x4`]; falls back to [`RowDot::dot`] per row.
    #[inline]
    pub fn dot_x4(&self, w_row: &[u8], x: [&[u8]; TOKENS]) -> [f32; TOKENS] {
        let Some(f) = self.x4 else {
            return x.map(|x| self.dot(w_row, x));
        };
        assert!(
            w_row.len() == self.w_bytes && x.iter().all(|x| x.len() == self.x_bytes),
            "vec_dot: row lengths"
        );
        // SAFETY: as above.
        unsafe { f(self.n, w_row, x) }
    }
}

/// [`RowDot`]'s kernel for big batches (see [`RowDot::tiled`]).
#[derive(Clone, Copy)]
pub struct RowDotTiled {
    dot: RowDot,
    f: DotFnX4,
}

impl RowDotTiled {
    /// One weight row against [`TOKENS`] activation rows.
    #[inline]
    pub fn dot_x4(&self, w_row: &[u8], x: [&[u8]; TOKENS]) -> [f32; TOKENS] {
        assert!(
            w_row.len() == self.dot.w_bytes && x.iter().all(|x| x.len() == self.dot.x_bytes),
            "vec_dot: row lengths"
        );
        // SAFETY: as in `RowDot::dot`.
        unsafe { (self.f)(self.dot.n, w_row, x) }
    }
}

/// Whether [`vec_dot_x4`] has a kernel for `weight` on this CPU.
pub fn has_x4(weight: GgmlType) -> bool {
    kernels().table_x4[index(weight)].is_some()
}

/// The scalar kernel, for tests and comparisons.
pub fn vec_dot_scalar(weight: GgmlType, n: usize, w_row: &[u8], x: &[u8]) -> f32 {
    check_lengths(weight, n, w_row, x);
    scalar_kernel(weight)(n, w_row, x)
}

/// Whether the CPU has AVX2 and FMA (x86-64).
#[cfg(target_arch = "x86_64")]
pub fn fma_detected() -> bool {
    avx2::detected()
}

/// The instruction set `vec_dot` uses ("avx2+vnni", "avx2" or "scalar").
pub fn simd_name() -> &'static str {
    kernels().name
}

/// Whether `vec_dot` has a SIMD kernel for `weight` on this CPU.
pub fn has_simd(weight: GgmlType) -> bool {
    kernels().simd[index(weight)]
}

fn check_lengths(weight: GgmlType, n: usize, w_row: &[u8], x: &[u8]) {
    let act = activation_type(weight).ggml_type();
    let ok = n % weight.block_elems() == 0
        && weight.row_bytes(n as u64) == Some(w_row.len() as u64)
        && act.row_bytes(n as u64) == Some(x.len() as u64);
    assert!(
        ok,
        "{weight} vec_dot: n = {n}, weight row {} bytes, activation row {} bytes",
        w_row.len(),
        x.len()
    );
}

pub(crate) type DotFn = unsafe fn(usize, &[u8], &[u8]) -> f32;
pub(crate) type DotFnX4 = unsafe fn(usize, &[u8], [&[u8]; TOKENS]) -> [f32; TOKENS];

/// Entries of the per-type tables: one per [`GgmlType::ALL`].
const N_TYPES: usize = GgmlType::ALL.len();

struct Kernels {
    name: &'static str,
    table: [DotFn; N_TYPES],
    table_x4: [Option<DotFnX4>; N_TYPES],
    table_tiled: [Option<DotFnX4>; N_TYPES],
    /// F32 rows in llamafile's tinyBLAS order (batches of 2+ tokens).
    f32_sgemm: DotFn,
    simd: [bool; N_TYPES],
    /// Q8_0/Q8_1/Q8_K activations quantized with AVX2 (`avx2::quantize_q8`, `avx2::quantize_q8_k`).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    simd_quantize: bool,
}

fn index(t: GgmlType) -> usize {
    GgmlType::ALL.iter().position(|&a| a == t).unwrap_or(0)
}

fn scalar_kernel(t: GgmlType) -> fn(usize, &[u8], &[u8]) -> f32 {
    match t {
        GgmlType::F32 => scalar::f32,
        GgmlType::F16 => scalar::f16_row,
        GgmlType::BF16 => scalar::bf16,
        GgmlType::Q4_0 => scalar::q4_0,
        GgmlType::Q4_1 => scalar::q4_1,
        GgmlType::Q5_0 => scalar::q5_0,
        GgmlType::Q5_1 => scalar::q5_1,
        GgmlType::Q8_0 => scalar::q8_0,
        GgmlType::Q8_1 => scalar::q8_1,
        GgmlType::Q2K => scalar::q2_k,
        GgmlType::Q3K => scalar::q3_k,
        GgmlType::Q4K => scalar::q4_k,
        GgmlType::Q5K => scalar::q5_k,
        GgmlType::Q6K => scalar::q6_k,
        GgmlType::Q8K => scalar::q8_k,
        GgmlType::MXFP4 => mxfp4::scalar,
    }
}

fn scalar_as_unsafe(t: GgmlType) -> DotFn {
    scalar_kernel(t)
}

fn kernels() -> &'static Kernels {
    static KERNELS: OnceLock<Kernels> = OnceLock::new();
    KERNELS.get_or_init(|| {
        #[cfg_attr(
            not(any(target_arch = "x86_64", target_arch = "aarch64")),
            allow(unused_mut)
        )]
        let mut k = Kernels {
            name: "scalar",
            table: GgmlType::ALL.map(scalar_as_unsafe),
            table_x4: [None; N_TYPES],
            table_tiled: [None; N_TYPES],
            f32_sgemm: scalar::f32_sgemm,
            simd: [false; N_TYPES],
            simd_quantize: false,
        };
        #[cfg(target_arch = "aarch64")]
        {
            k.name = "neon";
            for (t, f) in neon::kernels() {
                k.table[index(t)] = f;
                k.simd[index(t)] = true;
            }
        }
        #[cfg(target_arch = "x86_64")]
        if avx2::detected() {
            k.name = "avx2";
            k.simd_quantize = true;
            let (one, x4) = if avx2::vnni_detected() {
                k.name = "avx2+vnni";
                (avx2::kernels_vnni(), avx2::kernels_x4_vnni())
            } else {
                (avx2::kernels(), avx2::kernels_x4())
            };
            for (t, f) in one {
                k.table[index(t)] = f;
                k.simd[index(t)] = true;
            }
            k.f32_sgemm = avx2::f32_sgemm;
            for (t, f) in x4 {
                k.table_x4[index(t)] = Some(f);
            }
            for (t, f) in avx2::kernels_tiled() {
                k.table_tiled[index(t)] = Some(f);
            }
        }
        k
    })
}
