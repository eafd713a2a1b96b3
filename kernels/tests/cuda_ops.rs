//! Every op of the CUDA backend against the CPU backend (the reference) on
//! fresh random inputs: every weight type, several shapes and batch sizes.
//! The same bodies run on a real GPU where a CUDA driver is, and on the CUDA
//! emulator (`cuda::emulator`, the kernels as host C++) everywhere else, so
//! CI runs every kernel. `STRATA_CUDA_EMULATOR=1` picks the emulator even
//! where a GPU is.
//!
//! Tolerances (relative L2 error, ||gpu - cpu|| / ||cpu||):
//! - f32 elementwise ops (norm, RoPE, gating, adds, embedding): 1e-5, float
//!   rounding only;
//! - matmul: 3e-2 against the CPU: both quantize activations to int8 per
//!   block (the CPU to Q8_0/Q8_K blocks, the GPU per 32 values with an f32
//!   scale), so each carries its own ~1% rounding; against the exact
//!   product of the dequantized weights each must be within 2e-2;
//! - attention: 5e-3 (the CPU rounds Q and the V sum to f16 like ggml).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use strata_kernels::cuda::{CudaBackend, CudaKvCache};
use strata_kernels::{
    AttentionBatch, Backend, CpuBackend, Gating, KvGeometry, RopeConfig, Router, Yarn,
};
use strata_model::arch::{Activation, RopeStyle};
use strata_model::profile::KvType;
use strata_model::GgmlType;

mod common;
use common::*;

#[test]
fn matmul_matches_cpu_for_every_type_shape_and_batch() {
    let (g, c) = (gpu(), CpuBackend::new());
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    let mut worst = Vec::new();
    for &dtype in WEIGHT_TYPES {
        for &(rows, cols) in &[(64usize, 256usize), (96, 768), (1000, 2048)] {
            let w = random(&mut rng, rows * cols, 1.0);
            let (bytes, deq) = quantized(dtype, &w, cols);
            let dims = [cols as u64, rows as u64];
            let wg = g.load_weight("w", dtype, &dims, &bytes).unwrap();
            let wc = c.load_weight("w", dtype, &dims, &bytes).unwrap();
            // Decode-sized batches, and one prompt for the middle shape.
            let prompt = (rows == 96).then_some(200);
            for tokens in [1usize, 3, 8, 13].into_iter().chain(prompt) {
                let x = random(&mut rng, tokens * cols, 1.0);
                let got = g
                    .act_to_host(
                        &g.matmul(&wg, &g.act_from_host(&x, tokens, cols).unwrap())
                            .unwrap(),
                    )
                    .unwrap();
                let cpu = c
                    .act_to_host(
                        &c.matmul(&wc, &c.act_from_host(&x, tokens, cols).unwrap())
                            .unwrap(),
                    )
                    .unwrap();
                let exact: Vec<f32> = (0..tokens)
                    .flat_map(|t| {
                        let (x, deq) = (&x, &deq);
                        (0..rows).map(move |r| {
                            (0..cols)
                                .map(|i| deq[r * cols + i] as f64 * x[t * cols + i] as f64)
                                .sum::<f64>() as f32
                        })
                    })
                    .collect();
                let (vs_cpu, vs_exact) = (rel_err(&got, &cpu), rel_err(&got, &exact));
                worst.push((
                    format!("{dtype} {rows}x{cols} batch {tokens}"),
                    vs_cpu,
                    vs_exact,
                ));
                assert!(
                    vs_exact < 2e-2,
                    "{dtype} {rows}x{cols} batch {tokens}: {vs_exact:.2e} vs exact"
                );
                assert!(
                    vs_cpu < 3e-2,
                    "{dtype} {rows}x{cols} batch {tokens}: {vs_cpu:.2e} vs CPU"
                );
            }
        }
    }
    worst.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (what, vs_cpu, vs_exact) in worst.iter().take(5) {
        println!("worst: {what}: {vs_cpu:.2e} vs CPU, {vs_exact:.2e} vs exact");
    }
}

#[test]
fn embedding_rows_match_cpu_for_every_type() {
    let (g, c) = (gpu(), CpuBackend::new());
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    for &dtype in WEIGHT_TYPES {
        let (rows, cols) = (300, 512);
        let (bytes, _) = quantized(dtype, &random(&mut rng, rows * cols, 1.0), cols);
        let dims = [cols as u64, rows as u64];
        let wg = g.load_weight("emb", dtype, &dims, &bytes).unwrap();
        let wc = c.load_weight("emb", dtype, &dims, &bytes).unwrap();
        let ids: Vec<u32> = (0..7).map(|_| rng.random_range(0..rows as u32)).collect();
        let got = g.act_to_host(&g.embed(&wg, &ids, 1.7).unwrap()).unwrap();
        let want = c.act_to_host(&c.embed(&wc, &ids, 1.7).unwrap()).unwrap();
        assert!(
            rel_err(&got, &want) < 1e-5,
            "{dtype}: {:.2e}",
            rel_err(&got, &want)
        );
        assert!(
            g.embed(&wg, &[rows as u32], 1.0).is_err(),
            "an id past the table is refused"
        );
    }
}

#[test]
fn elementwise_ops_match_cpu() {
    let (g, c) = (gpu(), CpuBackend::new());
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    let check = |what: &str, got: Vec<f32>, want: Vec<f32>| {
        let e = rel_err(&got, &want);
        assert!(e < 1e-5, "{what}: {e:.2e}");
    };
    for &(rows, cols, group) in &[
        (1usize, 576usize, 576usize),
        (5, 2048, 2048),
        (7, 1024, 128),
    ] {
        let x = random(&mut rng, rows * cols, 3.0);
        let w = random(&mut rng, group, 1.0);
        let (wg, wc) = (vector(&g, &w), vector(&c, &w));
        let (xg, xc) = (
            g.act_from_host(&x, rows, cols).unwrap(),
            c.act_from_host(&x, rows, cols).unwrap(),
        );
        check(
            "rms_norm",
            g.act_to_host(&g.rms_norm(&xg, &wg, 1e-6).unwrap()).unwrap(),
            c.act_to_host(&c.rms_norm(&xc, &wc, 1e-6).unwrap()).unwrap(),
        );

        let y = random(&mut rng, rows * cols, 1.0);
        let (yg, yc) = (
            g.act_from_host(&y, rows, cols).unwrap(),
            c.act_from_host(&y, rows, cols).unwrap(),
        );
        for act in [
            Activation::Silu,
            Activation::GeluTanh,
            Activation::SwigluOai,
        ] {
            check(
                &format!("gated {act:?}"),
                g.act_to_host(&g.gated(&xg, &yg, act).unwrap()).unwrap(),
                c.act_to_host(&c.gated(&xc, &yc, act).unwrap()).unwrap(),
            );
        }
        let (mut a, mut b) = (
            g.act_from_host(&x, rows, cols).unwrap(),
            c.act_from_host(&x, rows, cols).unwrap(),
        );
        g.add_assign(&mut a, &yg).unwrap();
        c.add_assign(&mut b, &yc).unwrap();
        check(
            "add_assign",
            g.act_to_host(&a).unwrap(),
            c.act_to_host(&b).unwrap(),
        );
        let bias = random(&mut rng, cols, 1.0);
        g.add_bias(&mut a, &vector(&g, &bias)).unwrap();
        c.add_bias(&mut b, &vector(&c, &bias)).unwrap();
        check(
            "add_bias",
            g.act_to_host(&a).unwrap(),
            c.act_to_host(&b).unwrap(),
        );
        let pick = [rows - 1, 0];
        check(
            "select_rows",
            g.act_to_host(&g.select_rows(&xg, &pick).unwrap()).unwrap(),
            c.act_to_host(&c.select_rows(&xc, &pick).unwrap()).unwrap(),
        );
    }
    for style in [RopeStyle::Normal, RopeStyle::Neox] {
        for (head_dim, dims, with_factors) in [
            (64usize, 64usize, false),
            (128, 128, true),
            (256, 128, false),
        ] {
            let (rows, n_heads) = (6, 4);
            let x = random(&mut rng, rows * n_heads * head_dim, 1.0);
            let positions: Vec<u32> = (0..rows as u32).map(|i| i * 37 + 5).collect();
            let cfg = RopeConfig {
                style,
                head_dim,
                dims,
                freq_base: 500000.0,
                freq_scale: 1.0,
                yarn: None,
            };
            let e = rope_err((&g, &c), &mut rng, &x, &positions, &cfg, with_factors);
            assert!(
                e < 1e-5,
                "rope {style:?} head_dim {head_dim} dims {dims}: {e:.2e}"
            );
        }
    }
}

/// RoPE of `x` (one row per position) on both backends, with random
/// frequency factors when `with_factors`; the GPU's relative error.
fn rope_err(
    (g, c): (&CudaBackend, &CpuBackend),
    rng: &mut ChaCha8Rng,
    x: &[f32],
    positions: &[u32],
    cfg: &RopeConfig,
    with_factors: bool,
) -> f64 {
    let (rows, cols) = (positions.len(), x.len() / positions.len());
    let ff: Vec<f32> = (0..cfg.dims / 2)
        .map(|_| rng.random_range(1.0f32..8.0))
        .collect();
    let (ffg, ffc) = (vector(g, &ff), vector(c, &ff));
    let mut a = g.act_from_host(x, rows, cols).unwrap();
    let mut b = c.act_from_host(x, rows, cols).unwrap();
    g.rope(&mut a, positions, cfg, with_factors.then_some(&ffg))
        .unwrap();
    c.rope(&mut b, positions, cfg, with_factors.then_some(&ffc))
        .unwrap();
    rel_err(&g.act_to_host(&a).unwrap(), &c.act_to_host(&b).unwrap())
}

/// The shape of an attention test case.
struct AttentionCase<'a> {
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    window: Option<usize>,
    sinks: Option<&'a [f32]>,
}

/// One attention batch on both backends over random Q, K and V: token `i`
/// of `step` is sequence `step[i].0` at position `step[i].1`. Returns the
/// GPU's relative error.
fn attention_err(
    (g, c): (&CudaBackend, &CpuBackend),
    (kg, kc): (&mut CudaKvCache, &mut <CpuBackend as Backend>::KvCache),
    layer: usize,
    tables: &[Vec<u32>],
    step: &[(u32, u32)],
    case: &AttentionCase<'_>,
    rng: &mut ChaCha8Rng,
) -> f64 {
    let (n, head_dim) = (step.len(), case.head_dim);
    let (q_cols, kv_cols) = (case.n_heads * head_dim, case.n_kv_heads * head_dim);
    let positions: Vec<u32> = step.iter().map(|s| s.1).collect();
    let token_seq: Vec<u32> = step.iter().map(|s| s.0).collect();
    let q = random(rng, n * q_cols, 1.0);
    let k = random(rng, n * kv_cols, 1.0);
    let v = random(rng, n * kv_cols, 1.0);
    let table_refs: Vec<&[u32]> = tables.iter().map(|t| t.as_slice()).collect();
    let batch = AttentionBatch {
        positions: &positions,
        token_seq: &token_seq,
        block_tables: &table_refs,
        n_heads: case.n_heads,
        scale: 1.0 / (head_dim as f32).sqrt(),
        scale_query: false,
        window: case.window,
        sinks: case.sinks,
        decode: &[],
        tiled: &[],
    };
    let got = attend_on(g, kg, layer, (&q, &k, &v), n, &batch);
    let want = attend_on(c, kc, layer, (&q, &k, &v), n, &batch);
    rel_err(&got, &want)
}

#[test]
fn paged_attention_matches_cpu() {
    let (g, c) = (gpu(), CpuBackend::new());
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    for &(n_heads, n_kv_heads, head_dim, window) in &[
        (9usize, 3usize, 64usize, None),
        (4, 1, 256, Some(40usize)),
        (8, 8, 128, None),
    ] {
        let geo = KvGeometry {
            n_layers: 2,
            n_kv_heads,
            head_dim_k: head_dim,
            head_dim_v: head_dim,
            kv_type: KvType::F16,
            n_blocks: 24,
        };
        let (mut kg, mut kc) = (g.new_kv_cache(geo).unwrap(), c.new_kv_cache(geo).unwrap());
        // Two sequences with scattered blocks (10 blocks hold 301
        // positions): a 300-token prompt, then one decode step for both
        // plus a 5-token chunk of the second.
        let tables: [Vec<u32>; 2] = [vec![7, 2, 11, 20, 3, 15, 23, 1, 18, 12], vec![0, 5, 9]];
        let steps: [Vec<(u32, u32)>; 2] = [
            (0..300).map(|p| (0, p)).collect(),
            vec![(0, 300), (1, 0), (1, 1), (1, 2), (1, 3), (1, 4)],
        ];
        for step in &steps {
            let case = AttentionCase {
                n_heads,
                n_kv_heads,
                head_dim,
                window,
                sinks: None,
            };
            let e = attention_err(
                (&g, &c),
                (&mut kg, &mut kc),
                1,
                &tables,
                step,
                &case,
                &mut rng,
            );
            assert!(
                e < 5e-3,
                "attention heads {n_heads}/{n_kv_heads} dim {head_dim} window {window:?}: {e:.2e}"
            );
        }
    }
}

#[test]
fn heads_wider_than_the_attention_kernel_are_refused() {
    let g = gpu();
    let geo = |head_dim| KvGeometry {
        n_layers: 1,
        n_kv_heads: 2,
        head_dim_k: head_dim,
        head_dim_v: head_dim,
        kv_type: KvType::F16,
        n_blocks: 4,
    };
    assert!(g.new_kv_cache(geo(512)).is_ok());
    let err = g
        .new_kv_cache(geo(576))
        .err()
        .expect("head_dim 576 refused");
    let msg = err.to_string();
    assert!(msg.contains("576") && msg.contains("512"), "{err}");
}

/// gpt-oss's gate and up values reach past swiglu_oai's limit of 7: the
/// clamps must agree too.
#[test]
fn swiglu_oai_and_attn_temperature_match_cpu() {
    let (g, c) = (gpu(), CpuBackend::new());
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    let (rows, cols) = (5, 2880);
    let gate = random(&mut rng, rows * cols, 12.0);
    let up = random(&mut rng, rows * cols, 12.0);
    assert!(gate.iter().any(|&v| v > 7.0) && up.iter().any(|&v| v < -7.0));
    let got = g
        .act_to_host(
            &g.gated(
                &g.act_from_host(&gate, rows, cols).unwrap(),
                &g.act_from_host(&up, rows, cols).unwrap(),
                Activation::SwigluOai,
            )
            .unwrap(),
        )
        .unwrap();
    let want = c
        .act_to_host(
            &c.gated(
                &c.act_from_host(&gate, rows, cols).unwrap(),
                &c.act_from_host(&up, rows, cols).unwrap(),
                Activation::SwigluOai,
            )
            .unwrap(),
        )
        .unwrap();
    let e = rel_err(&got, &want);
    assert!(e < 1e-5, "swiglu_oai: {e:.2e}");

    let positions: Vec<u32> = (0..rows as u32).map(|i| i * 9000).collect();
    let (mut a, mut b) = (
        g.act_from_host(&gate, rows, cols).unwrap(),
        c.act_from_host(&gate, rows, cols).unwrap(),
    );
    g.attn_temperature(&mut a, &positions, 16384, 0.1).unwrap();
    c.attn_temperature(&mut b, &positions, 16384, 0.1).unwrap();
    assert_eq!(
        g.act_to_host(&a).unwrap(),
        c.act_to_host(&b).unwrap(),
        "attn_temperature"
    );
}

/// YaRN RoPE (gpt-oss's: factor 32 from 4096, base 150000; and
/// Ministral-3-like: factor 16, log multiplier 1, with freq factors) for
/// both styles, at positions across and beyond the original context.
#[test]
fn yarn_rope_matches_cpu() {
    let (g, c) = (gpu(), CpuBackend::new());
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    let cases = [
        (
            64usize,
            64usize,
            150_000.0f32,
            32.0f32,
            4096u32,
            0.0f32,
            false,
        ),
        (128, 128, 1_000_000.0, 16.0, 16384, 1.0, true),
        (128, 96, 10_000.0, 4.0, 2048, 0.0, false),
    ];
    for style in [RopeStyle::Normal, RopeStyle::Neox] {
        for &(head_dim, dims, base, factor, n_ctx_orig, log_mul, with_factors) in &cases {
            let (rows, n_heads) = (6, 3);
            let x = random(&mut rng, rows * n_heads * head_dim, 1.0);
            let positions: Vec<u32> = [0u32, 1, 37, 4095, 4097, 70_000].to_vec();
            let cfg = RopeConfig {
                style,
                head_dim,
                dims,
                freq_base: base,
                freq_scale: 1.0 / factor,
                yarn: Some(Yarn::llama_cpp(factor, n_ctx_orig, 32.0, 1.0, log_mul, 1.0)),
            };
            // Thetas reach 70000 rad: both build them as ggml-cpu does.
            let e = rope_err((&g, &c), &mut rng, &x, &positions, &cfg, with_factors);
            assert!(
                e < 1e-5,
                "yarn rope {style:?} head_dim {head_dim} dims {dims} factor {factor}: {e:.2e}"
            );
        }
    }
}

/// Attention with gpt-oss's sinks: GQA, a sliding window, a prompt then a
/// mixed decode batch, sinks above and below the scores.
#[test]
fn attention_with_sinks_matches_cpu() {
    let (g, c) = (gpu(), CpuBackend::new());
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    for &(n_heads, n_kv_heads, head_dim, window) in &[
        (8usize, 2usize, 64usize, None),
        (8, 2, 64, Some(40usize)),
        (6, 6, 128, Some(7)),
    ] {
        let geo = KvGeometry {
            n_layers: 1,
            n_kv_heads,
            head_dim_k: head_dim,
            head_dim_v: head_dim,
            kv_type: KvType::F16,
            n_blocks: 12,
        };
        let (mut kg, mut kc) = (g.new_kv_cache(geo).unwrap(), c.new_kv_cache(geo).unwrap());
        let tables: [Vec<u32>; 2] = [vec![5, 2, 9, 0, 7], vec![1, 11]];
        let steps: [Vec<(u32, u32)>; 2] = [
            (0..100).map(|p| (0, p)).collect(),
            vec![(0, 100), (1, 0), (1, 1), (1, 2)],
        ];
        // Logits from well below to well above the scores (scale 4 on
        // unit-ish scores of +-2).
        let sinks = random(&mut rng, n_heads, 4.0);
        for step in &steps {
            let case = AttentionCase {
                n_heads,
                n_kv_heads,
                head_dim,
                window,
                sinks: Some(&sinks),
            };
            let e = attention_err(
                (&g, &c),
                (&mut kg, &mut kc),
                0,
                &tables,
                step,
                &case,
                &mut rng,
            );
            assert!(
                e < 5e-3,
                "attention with sinks, heads {n_heads}/{n_kv_heads} dim {head_dim} window {window:?}: {e:.2e}"
            );
        }
    }
}

// ---- mixture-of-experts ops ----

/// `matmul_id` against the CPU, and against the exact product of the
/// dequantized experts, with matmul's tolerances (the same int8 activation
/// rounding on each side), for the broadcast (gate/up) and per-slot (down)
/// input forms.
#[test]
fn matmul_id_matches_cpu_for_every_type_and_batch() {
    let (g, c) = (gpu(), CpuBackend::new());
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    let (rows, cols) = (40usize, 512usize);
    for &dtype in WEIGHT_TYPES {
        let w = random(&mut rng, N_EXPERT * rows * cols, 1.0);
        let (bytes, deq) = quantized(dtype, &w, cols);
        let dims = [cols as u64, rows as u64, N_EXPERT as u64];
        let wg = g.load_weight("exps", dtype, &dims, &bytes).unwrap();
        let wc = c.load_weight("exps", dtype, &dims, &bytes).unwrap();
        for tokens in [1usize, 3, 8, 13] {
            let ids = expert_ids(&mut rng, tokens);
            let ones = vec![1.0; ids.len()];
            let rg = g.routing(&ids, &ones, N_USED, N_EXPERT).unwrap();
            let rc = c.routing(&ids, &ones, N_USED, N_EXPERT).unwrap();
            for per_slot in [false, true] {
                let x_rows = if per_slot { ids.len() } else { tokens };
                let x = random(&mut rng, x_rows * cols, 1.0);
                let got = g
                    .matmul_id(&wg, &g.act_from_host(&x, x_rows, cols).unwrap(), &rg)
                    .unwrap();
                assert_eq!(g.act_shape(&got), (ids.len(), rows));
                let got = g.act_to_host(&got).unwrap();
                let cpu = c
                    .act_to_host(
                        &c.matmul_id(&wc, &c.act_from_host(&x, x_rows, cols).unwrap(), &rc)
                            .unwrap(),
                    )
                    .unwrap();
                let exact: Vec<f32> = (0..ids.len())
                    .flat_map(|s| {
                        let xr = if per_slot { s } else { s / N_USED };
                        let (e, x, deq) = (ids[s] as usize, &x, &deq);
                        (0..rows).map(move |r| {
                            let wr = (e * rows + r) * cols;
                            (0..cols)
                                .map(|i| deq[wr + i] as f64 * x[xr * cols + i] as f64)
                                .sum::<f64>() as f32
                        })
                    })
                    .collect();
                let what = format!("{dtype} batch {tokens} per_slot {per_slot}");
                let (vs_cpu, vs_exact) = (rel_err(&got, &cpu), rel_err(&got, &exact));
                assert!(vs_exact < 2e-2, "{what}: {vs_exact:.2e} vs exact");
                assert!(vs_cpu < 3e-2, "{what}: {vs_cpu:.2e} vs CPU");
            }
        }
    }
}

#[test]
fn add_bias_id_mul_id_and_moe_combine_match_cpu() {
    let (g, c) = (gpu(), CpuBackend::new());
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    let cols = 72usize;
    let bias = random(&mut rng, N_EXPERT * cols, 1.0);
    let dims = [cols as u64, N_EXPERT as u64];
    let bg = g
        .load_weight("b", GgmlType::F32, &dims, bytemuck_f32(&bias))
        .unwrap();
    let bc = c
        .load_weight("b", GgmlType::F32, &dims, bytemuck_f32(&bias))
        .unwrap();
    // Each expert's output scale (Gemma 4's ffn_down_exps.scale).
    let scale = random(&mut rng, N_EXPERT, 1.0);
    for tokens in [1usize, 3, 8, 13] {
        let ids = expert_ids(&mut rng, tokens);
        let weights = random(&mut rng, ids.len(), 1.0);
        let rg = g.routing(&ids, &weights, N_USED, N_EXPERT).unwrap();
        let rc = c.routing(&ids, &weights, N_USED, N_EXPERT).unwrap();
        let y = random(&mut rng, ids.len() * cols, 1.0);
        let mut yg = g.act_from_host(&y, ids.len(), cols).unwrap();
        let mut yc = c.act_from_host(&y, ids.len(), cols).unwrap();
        g.add_bias_id(&mut yg, &bg, &rg).unwrap();
        c.add_bias_id(&mut yc, &bc, &rc).unwrap();
        assert!(
            rel_err(&g.act_to_host(&yg).unwrap(), &c.act_to_host(&yc).unwrap()) < 1e-5,
            "add_bias_id batch {tokens}"
        );
        // mul_id on fresh rows: row s times scale[ids[s]], one product each.
        let want: Vec<f32> = y
            .chunks(cols)
            .zip(&ids)
            .flat_map(|(row, &e)| {
                let s = scale[e as usize];
                row.iter().map(move |v| v * s)
            })
            .collect();
        for got in [
            mul_id_on_host(&g, &y, cols, &scale, &ids),
            mul_id_on_host(&c, &y, cols, &scale, &ids),
        ] {
            assert_eq!(got, want, "mul_id batch {tokens}");
        }
        let og = g.moe_combine(&yg, &rg).unwrap();
        let oc = c.moe_combine(&yc, &rc).unwrap();
        assert_eq!(g.act_shape(&og), (tokens, cols));
        assert!(
            rel_err(&g.act_to_host(&og).unwrap(), &c.act_to_host(&oc).unwrap()) < 1e-5,
            "moe_combine batch {tokens}"
        );
    }
}

/// `mul_id` of host rows through a backend (F32 scales, as in the GGUFs).
fn mul_id_on_host<B: Backend>(
    b: &B,
    y: &[f32],
    cols: usize,
    scale: &[f32],
    ids: &[u32],
) -> Vec<f32> {
    let dims = [scale.len() as u64];
    let s = b
        .load_weight("s", GgmlType::F32, &dims, bytemuck_f32(scale))
        .unwrap();
    let r = b
        .routing(ids, &vec![1.0; ids.len()], N_USED, N_EXPERT)
        .unwrap();
    let mut x = b.act_from_host(y, ids.len(), cols).unwrap();
    b.mul_id(&mut x, &s, &r).unwrap();
    b.act_to_host(&x).unwrap()
}

/// Ids outside the experts, and inputs of the wrong shape, are errors
/// (checked on the host: no kernel reads outside a weight).
/// Dense ops refuse input that does not fit with `KernelError::Invalid`,
/// before any kernel runs.
#[test]
fn dense_ops_refuse_bad_input_on_the_gpu() {
    dense_ops_refuse_bad_input(&gpu());
}

#[test]
fn moe_ops_refuse_bad_ids() {
    moe_ops_refuse_bad_input(&gpu());
}

/// The router on the device against the CPU's (ggml's arithmetic): every
/// gating, with and without normalisation and scale, expert counts from 8
/// to 512, up to 8 experts per token. Ids must be equal except where the
/// CPU's probabilities of the two candidates are within 1e-5 (a near-tie
/// the device's expf may order the other way); weights within 1e-5.
#[test]
fn device_router_matches_cpu() {
    let (g, c) = (gpu(), CpuBackend::new());
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    for gating in [Gating::Softmax, Gating::SoftmaxWeight, Gating::Sigmoid] {
        for &(n_expert, n_used, norm, scale) in &[
            (8usize, 2usize, false, 1.0f32),
            (32, 4, true, 1.0),
            (128, 8, true, 2.5),
            (512, 8, false, 0.0),
        ] {
            let router = Router {
                n_expert,
                n_used,
                gating,
                norm,
                scale,
            };
            for tokens in [1usize, 5, 37] {
                let logits = random(&mut rng, tokens * n_expert, 4.0);
                let (gi, gw) = g
                    .routing_to_host(
                        &g.route(
                            &g.act_from_host(&logits, tokens, n_expert).unwrap(),
                            &router,
                        )
                        .unwrap(),
                    )
                    .unwrap();
                let want = c
                    .route(
                        &c.act_from_host(&logits, tokens, n_expert).unwrap(),
                        &router,
                    )
                    .unwrap();
                let what = format!("{gating:?} {n_expert}/{n_used} norm {norm} scale {scale}");
                assert_eq!(gi.len(), want.ids.len(), "{what}");
                let mut tied = false;
                for t in 0..tokens {
                    let row = &logits[t * n_expert..(t + 1) * n_expert];
                    for j in 0..n_used {
                        let s = t * n_used + j;
                        let (a, b) = (gi[s] as usize, want.ids[s] as usize);
                        if a != b {
                            // Sigmoid and softmax are monotonic: compare logits.
                            assert!(
                                (row[a] - row[b]).abs() <= 1e-5 * row[b].abs().max(1.0),
                                "{what} token {t} slot {j}: expert {a}, the CPU {b}"
                            );
                            tied = true;
                        }
                    }
                    if tied {
                        break;
                    }
                    let (gw, cw) = (
                        &gw[t * n_used..][..n_used],
                        &want.weights[t * n_used..][..n_used],
                    );
                    for (x, y) in gw.iter().zip(cw) {
                        assert!(
                            (x - y).abs() <= 1e-5 * y.abs().max(1e-3),
                            "{what} token {t}: weights {gw:?} vs {cw:?}"
                        );
                    }
                }
            }
        }
    }
}
