//! What the CUDA op tests share: the device (a real GPU, else the CUDA
//! emulator), seeded random inputs, quantized weights and the error measure.
#![allow(dead_code)] // each test binary uses its own subset

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use strata_kernels::cuda::{emulator, CudaBackend};
use strata_kernels::Backend;
use strata_model::quant::{dequantize_row, quantize_row};
use strata_model::GgmlType;

pub const WEIGHT_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::MXFP4,
];

/// A real GPU where there is one, else the CUDA emulator.
pub fn gpu() -> CudaBackend {
    emulator::install_unless_gpu().expect("the CUDA emulator");
    let b = CudaBackend::new(0).expect("CUDA device 0");
    println!("device: {}", Backend::name(&b));
    b
}

pub fn seed() -> u64 {
    let s = rand::rng().random();
    println!("seed {s}");
    s
}

pub fn random(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| rng.random_range(-1.0f32..1.0) * scale)
        .collect()
}

pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths");
    assert!(got.iter().all(|v| v.is_finite()), "non-finite output");
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum();
    let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

pub fn quantized(dtype: GgmlType, values: &[f32], cols: usize) -> (Vec<u8>, Vec<f32>) {
    let rows = values.len() / cols;
    let rb = dtype.row_bytes(cols as u64).unwrap() as usize;
    let mut bytes = vec![0u8; rb * rows];
    let mut deq = vec![0f32; values.len()];
    for r in 0..rows {
        quantize_row(
            dtype,
            &values[r * cols..(r + 1) * cols],
            &mut bytes[r * rb..(r + 1) * rb],
        )
        .unwrap();
        dequantize_row(
            dtype,
            &bytes[r * rb..(r + 1) * rb],
            &mut deq[r * cols..(r + 1) * cols],
        )
        .unwrap();
    }
    (bytes, deq)
}

/// A 1-D f32 weight on both backends.
pub fn vector<B: Backend>(b: &B, v: &[f32]) -> B::Weight {
    b.load_weight("v", GgmlType::F32, &[v.len() as u64], bytemuck_f32(v))
        .unwrap()
}

pub fn bytemuck_f32(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte pattern is a valid u8.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len() * 4) }
}

// ---- mixture of experts ----

pub const N_EXPERT: usize = 8;
pub const N_USED: usize = 2;

/// Two distinct experts per token, different tokens taking different ones;
/// expert 0 is the first pick of the first ten tokens, so a batch of 13
/// gives it a long batch of its own.
pub fn expert_ids(rng: &mut ChaCha8Rng, tokens: usize) -> Vec<u32> {
    (0..tokens)
        .flat_map(|t| {
            let a = if t < 10 {
                0
            } else {
                rng.random_range(0..N_EXPERT as u32)
            };
            let b = (a + rng.random_range(1..N_EXPERT as u32)) % N_EXPERT as u32;
            [a, b]
        })
        .collect()
}
