//! What the CUDA op tests share: the device (a real GPU, else the CUDA
//! emulator), seeded random inputs, quantized weights and the error measure.
#![allow(dead_code)] // each test binary uses its own subset

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use strata_kernels::cuda::{emulator, CudaBackend};
use strata_kernels::{AttentionBatch, Backend, KernelError, KvGeometry, RopeConfig};
use strata_model::arch::{Activation, RopeStyle};
use strata_model::profile::KvType;
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

/// Every quantized weight type the CUDA kernels unpack.
pub const QUANT_TYPES: &[GgmlType] = &[
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
    GgmlType::Q8K,
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

/// One attention batch on backend `b` from host Q, K and V of `n` rows
/// each (writing K and V into `layer` of `cache`); the output on the host.
pub fn attend_on<B: Backend>(
    b: &B,
    cache: &mut B::KvCache,
    layer: usize,
    (q, k, v): (&[f32], &[f32], &[f32]),
    n: usize,
    batch: &AttentionBatch<'_>,
) -> Vec<f32> {
    let q = b.act_from_host(q, n, q.len() / n).unwrap();
    let k = b.act_from_host(k, n, k.len() / n).unwrap();
    let v = b.act_from_host(v, n, v.len() / n).unwrap();
    let out = b
        .attention(cache, layer, &q, Some((&k, &v)), batch)
        .unwrap();
    b.act_to_host(&out).unwrap()
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

/// Ids outside the experts, and MoE inputs of the wrong shape, are errors
/// on backend `g`.
pub fn moe_ops_refuse_bad_input<B: Backend>(g: &B) {
    let (rows, cols) = (8usize, 256usize);
    let (bytes, _) = quantized(GgmlType::Q4_0, &vec![0.5; N_EXPERT * rows * cols], cols);
    let dims = [cols as u64, rows as u64, N_EXPERT as u64];
    let w = g
        .load_weight("exps", GgmlType::Q4_0, &dims, &bytes)
        .unwrap();
    let x = g.act_from_host(&vec![1.0; 2 * cols], 2, cols).unwrap();
    let routing = |ids: &[u32]| g.routing(ids, &vec![1.0; ids.len()], N_USED, N_EXPERT);
    assert!(routing(&[0, 8, 1, 2]).is_err());
    assert!(routing(&[0, u32::MAX, 1, 2]).is_err());
    assert!(routing(&[0, 1, 2]).is_err());
    assert!(g.routing(&[0, 1], &[1.0], N_USED, N_EXPERT).is_err());
    let three_tokens = routing(&[0, 1, 2, 3, 4, 5]).unwrap();
    assert!(g.matmul_id(&w, &x, &three_tokens).is_err());
    let two_tokens = routing(&[0, 1, 2, 7]).unwrap();
    assert!(g.matmul_id(&w, &x, &two_tokens).is_ok());
    // A bias of 4 experts for a routing over 8.
    let bias = vec![0f32; 4 * 4];
    let b = g
        .load_weight("b", GgmlType::F32, &[4, 4], bytemuck_f32(&bias))
        .unwrap();
    let mut y = g.act_from_host(&[0.0; 8], 2, 4).unwrap();
    let one_token = routing(&[3, 7]).unwrap();
    assert!(g.add_bias_id(&mut y, &b, &one_token).is_err());
    assert!(g.moe_combine(&y, &two_tokens).is_err());
    assert!(g.moe_combine(&y, &one_token).is_ok());
}

// ---- bad input ----

/// Input a dense op cannot take is `KernelError::Invalid` on backend `g`
/// (checked on the host, before any kernel runs), never a panic or a
/// device error; the same op with fitting input then runs.
pub fn dense_ops_refuse_bad_input<B: Backend>(g: &B) {
    let invalid = |what: &str, r: Result<(), KernelError>| match r {
        Err(KernelError::Invalid(e)) => println!("{what}: {e}"),
        other => panic!("{what}: {other:?}, expected Invalid"),
    };
    let (rows, cols) = (2usize, 64usize);
    let x = g
        .act_from_host(&vec![1.0; rows * cols], rows, cols)
        .unwrap();
    let narrow = g.act_from_host(&[1.0; 8], 2, 4).unwrap();
    invalid("act_from_host", g.act_from_host(&[1.0; 5], 2, 3).map(drop));
    invalid("select_rows", g.select_rows(&x, &[0, 2]).map(drop));
    let w = g
        .load_weight("w", GgmlType::F32, &[32, 4], bytemuck_f32(&[0.5; 128]))
        .unwrap();
    invalid("matmul", g.matmul(&w, &x).map(drop));
    let norm = vector(g, &[1.0; 48]);
    invalid("rms_norm", g.rms_norm(&x, &norm, 1e-6).map(drop));
    invalid("rms_norm by a matrix", g.rms_norm(&x, &w, 1e-6).map(drop));
    invalid(
        "add_bias",
        g.add_bias(&mut x_copy(g, &x), &vector(g, &[1.0; 32])),
    );
    invalid("gated", g.gated(&x, &narrow, Activation::Silu).map(drop));
    invalid("add_assign", g.add_assign(&mut x_copy(g, &x), &narrow));
    invalid(
        "attn_temperature",
        g.attn_temperature(&mut x_copy(g, &x), &[1], 16384, 0.1),
    );
    let rope = RopeConfig {
        style: RopeStyle::Neox,
        head_dim: 24,
        dims: 24,
        freq_base: 10000.0,
        freq_scale: 1.0,
        yarn: None,
    };
    invalid(
        "rope: heads",
        g.rope(&mut x_copy(g, &x), &[0, 1], &rope, None),
    );
    let rope = RopeConfig {
        head_dim: 32,
        dims: 32,
        ..rope
    };
    invalid(
        "rope: positions",
        g.rope(&mut x_copy(g, &x), &[0], &rope, None),
    );
    let few = vector(g, &[1.0; 8]);
    invalid(
        "rope: factors",
        g.rope(&mut x_copy(g, &x), &[0, 1], &rope, Some(&few)),
    );
    g.rope(&mut x_copy(g, &x), &[0, 1], &rope, None).unwrap();

    // Attention: 2 query heads over 1 KV head of 32, a pool of 2 blocks.
    let geo = KvGeometry {
        n_layers: 1,
        n_kv_heads: 1,
        head_dim_k: 32,
        head_dim_v: 32,
        kv_type: KvType::F16,
        n_blocks: 2,
    };
    let mut cache = g.new_kv_cache(geo).unwrap();
    let kv = g.act_from_host(&vec![1.0; rows * 32], rows, 32).unwrap();
    let table = [1u32];
    let tables: [&[u32]; 1] = [&table];
    let batch = AttentionBatch {
        positions: &[0, 1],
        token_seq: &[0, 0],
        block_tables: &tables,
        n_heads: 2,
        scale: 1.0,
        scale_query: false,
        window: None,
        sinks: None,
        decode: &[],
        tiled: &[],
    };
    let mut attend = |layer, batch: &AttentionBatch<'_>| {
        g.attention(&mut cache, layer, &x, Some((&kv, &kv)), batch)
            .map(drop)
    };
    invalid("attention: layer", attend(1, &batch));
    invalid(
        "attention: sequence",
        attend(
            0,
            &AttentionBatch {
                token_seq: &[0, 1],
                ..batch.clone()
            },
        ),
    );
    let far = [0, 1_000_000];
    invalid(
        "attention: no block",
        attend(
            0,
            &AttentionBatch {
                positions: &far,
                ..batch.clone()
            },
        ),
    );
    let outside = [7u32];
    let outside_tables: [&[u32]; 1] = [&outside];
    invalid(
        "attention: block outside the pool",
        attend(
            0,
            &AttentionBatch {
                block_tables: &outside_tables,
                ..batch.clone()
            },
        ),
    );
    invalid(
        "attention: sinks",
        attend(
            0,
            &AttentionBatch {
                sinks: Some(&[0.0]),
                ..batch.clone()
            },
        ),
    );
    invalid(
        "attention: heads",
        attend(
            0,
            &AttentionBatch {
                n_heads: 3,
                ..batch.clone()
            },
        ),
    );
    attend(0, &batch).unwrap();
}

/// A copy of `x` on backend `g` (ops that write in place).
fn x_copy<B: Backend>(g: &B, x: &B::Act) -> B::Act {
    let (rows, cols) = g.act_shape(x);
    g.act_from_host(&g.act_to_host(x).unwrap(), rows, cols)
        .unwrap()
}
