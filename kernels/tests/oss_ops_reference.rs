//! The CPU backend's gpt-oss and Ministral-3 ops (YaRN RoPE, attention
//! sinks, `swiglu_oai`, attention temperature) against values computed
//! independently from ggml's formulas by `scripts/gen-oss-op-vectors.py`
//! (numpy; its output is pasted below). The CUDA backend is then held to the
//! CPU backend by `cuda_ops.rs`.
//!
//! Tolerances: the transcendental functions are glibc's here and correctly
//! rounded f64 ones rounded to f32 in the script, so values agree to a few
//! ulps (1e-6 relative); attention accumulates V in f16 as ggml does, which
//! the script does not (2e-3).

use strata_kernels::{
    attn_temperature_scales, AttentionBatch, Backend, CpuBackend, KvGeometry, RopeConfig, Yarn,
};
use strata_model::arch::{Activation, RopeStyle};
use strata_model::profile::KvType;

// python3 scripts/gen-oss-op-vectors.py (kept as printed).
#[rustfmt::skip]
#[allow(clippy::excessive_precision)] // f64 values as the script prints them
mod expected {
pub const GPT_OSS_CORR_DIMS: [f32; 2] = [8.0, 18.0];
pub const GPT_OSS_ATTN_FACTOR: [f32; 1] = [1.0];
pub const MISTRAL3_ATTN_FACTOR: [f32; 1] = [0.782926619052887];
pub const YARN_COS: [f32; 18] = [
    0.7275567650794983, 1.3303630352020264, 1.3463188409805298, 1.3465726375579834,
    1.3465735912322998, 1.3465735912322998, 1.1611758470535278, -1.325850248336792,
    -0.49233606457710266, 1.3367908000946045, 1.3465713262557983, 1.3465735912322998,
    1.2587392330169678, -0.2486279457807541, -0.5490886569023132, 0.30584558844566345,
    1.342836618423462, 1.3465725183486938,
];
pub const YARN_SIN: [f32; 18] = [
    1.133102536201477, 0.20831386744976044, 0.026190506294369698, 0.00162414344958961,
    2.4491926524206065e-05, 4.071379180459189e-07, -0.6818585991859436, 0.235332652926445,
    1.253341794013977, 0.16202086210250854, 0.002449190942570567, 4.0713777707424015e-05,
    0.47836801409721375, 1.3234214782714844, -1.2295373678207397, -1.3113805055618286,
    0.10025057941675186, 0.0016680433182045817,
];
pub const SWIGLU_OAI: [f32; 11] = [
    2.4347755243070424e-06, 0.0001286595652345568, -0.07710211724042892, -0.09880034625530243,
    0.0, 0.7007768750190735, 8.945786476135254, 52.42464065551758, 55.99962615966797,
    55.99962615966797, 55.99962615966797,
];
pub const SINK_ATTENTION: [f32; 16] = [
    0.028326212653986917, -0.05665242530797383, 0.11330485061594767, 0.014163106326993458,
    0.46472020190635355, -0.9294404038127071, 1.8588808076254142, 0.23236010095317677,
    0.1808790957724612, 0.04628241769546523, 0.01624599373983955, -0.208790232223387,
    0.5436609059502547, -0.5320975836054144, 1.2122549614228542, -0.13533398110794237,
];
pub const ATTN_TEMPERATURE: [f32; 6] = [
    1.0, 1.0, 1.0, 1.06931471824646, 1.13862943649292, 1.4127134084701538,
];
}
use expected::*;

fn close(got: f32, want: f32, rel: f32) -> bool {
    (got - want).abs() <= rel * want.abs() + 1e-9
}

/// gpt-oss's RoPE: head_dim 64, base 150000, YaRN factor 32 from 4096.
fn gpt_oss_rope(style: RopeStyle) -> RopeConfig {
    RopeConfig {
        style,
        head_dim: 64,
        dims: 64,
        freq_base: 150_000.0,
        freq_scale: 1.0 / 32.0,
        yarn: Some(Yarn::llama_cpp(32.0, 4096, 32.0, 1.0, 0.0, 1.0)),
    }
}

#[test]
fn yarn_parameters_follow_llama_cpp() {
    let y = Yarn::llama_cpp(32.0, 4096, 32.0, 1.0, 0.0, 1.0);
    assert_eq!(y.ext_factor, 1.0);
    assert_eq!(y.attn_factor, GPT_OSS_ATTN_FACTOR[0]);
    assert_eq!(y.corr_dims(64, 150_000.0), GPT_OSS_CORR_DIMS);
    let m = Yarn::llama_cpp(16.0, 16384, 32.0, 1.0, 1.0, 1.0);
    assert!(
        close(m.attn_factor, MISTRAL3_ATTN_FACTOR[0], 1e-6),
        "{}",
        m.attn_factor
    );
}

/// Rotating unit pairs reads back ggml's (cos, sin) cache, times mscale.
#[test]
fn yarn_rope_matches_ggml_formula() {
    let c = CpuBackend::new();
    let positions = [1u32, 100, 4097];
    let pairs = [0usize, 5, 10, 15, 20, 31];
    for style in [RopeStyle::Normal, RopeStyle::Neox] {
        let cfg = gpt_oss_rope(style);
        // Every pair (x0, x1) = (1, 0).
        let head: Vec<f32> = (0..64)
            .map(|j| match style {
                RopeStyle::Normal => f32::from(j % 2 == 0),
                RopeStyle::Neox => f32::from(j < 32),
            })
            .collect();
        let x: Vec<f32> = positions.iter().flat_map(|_| head.clone()).collect();
        let mut a = c.act_from_host(&x, positions.len(), 64).unwrap();
        c.rope(&mut a, &positions, &cfg, None).unwrap();
        let out = c.act_to_host(&a).unwrap();
        for (pi, _) in positions.iter().enumerate() {
            for (k, &i) in pairs.iter().enumerate() {
                let (ic, is) = match style {
                    RopeStyle::Normal => (2 * i, 2 * i + 1),
                    RopeStyle::Neox => (i, i + 32),
                };
                let e = pi * pairs.len() + k;
                let (cos, sin) = (out[pi * 64 + ic], out[pi * 64 + is]);
                assert!(
                    close(cos, YARN_COS[e], 1e-6) && close(sin, YARN_SIN[e], 1e-6),
                    "{style:?} pos {} pair {i}: ({cos}, {sin}) vs ({}, {})",
                    positions[pi],
                    YARN_COS[e],
                    YARN_SIN[e]
                );
            }
        }
    }
}

/// YaRN with `ext_factor = 0` and `attn_factor = 1` is plain RoPE, bit for bit.
#[test]
fn yarn_without_extension_is_plain_rope() {
    let c = CpuBackend::new();
    let positions = [0u32, 3, 77, 5000];
    let x: Vec<f32> = (0..4 * 2 * 128)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
        .collect();
    for style in [RopeStyle::Normal, RopeStyle::Neox] {
        let plain = RopeConfig {
            style,
            head_dim: 128,
            dims: 96,
            freq_base: 1_000_000.0,
            freq_scale: 0.25,
            yarn: None,
        };
        let yarn = RopeConfig {
            yarn: Some(Yarn {
                ext_factor: 0.0,
                attn_factor: 1.0,
                beta_fast: 32.0,
                beta_slow: 1.0,
                n_ctx_orig: 4096,
            }),
            ..plain
        };
        let (mut a, mut b) = (
            c.act_from_host(&x, 4, 256).unwrap(),
            c.act_from_host(&x, 4, 256).unwrap(),
        );
        c.rope(&mut a, &positions, &plain, None).unwrap();
        c.rope(&mut b, &positions, &yarn, None).unwrap();
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        assert_eq!(
            bits(c.act_to_host(&a).unwrap()),
            bits(c.act_to_host(&b).unwrap()),
            "{style:?}"
        );
    }
}

#[test]
fn swiglu_oai_matches_ggml_formula() {
    let c = CpuBackend::new();
    let g = [
        -10.0f32, -7.5, -1.0, -0.25, 0.0, 0.5, 3.0, 6.99, 7.0, 8.0, 20.0,
    ];
    let u = [
        -9.0f32, -7.0, -0.5, 0.0, 0.3, 1.0, 2.0, 6.5, 7.0, 7.5, 100.0,
    ];
    let out = c
        .act_to_host(
            &c.gated(
                &c.act_from_host(&g, 1, g.len()).unwrap(),
                &c.act_from_host(&u, 1, u.len()).unwrap(),
                Activation::SwigluOai,
            )
            .unwrap(),
        )
        .unwrap();
    for i in 0..g.len() {
        assert!(
            close(out[i], SWIGLU_OAI[i], 1e-6),
            "swiglu_oai({}, {}) = {} vs {}",
            g[i],
            u[i],
            out[i],
            SWIGLU_OAI[i]
        );
    }
}

fn one_layer_cache(
    c: &CpuBackend,
    n_kv_heads: usize,
    head_dim: usize,
) -> strata_kernels::cpu::CpuKvCache {
    c.new_kv_cache(KvGeometry {
        n_layers: 1,
        n_kv_heads,
        head_dim_k: head_dim,
        head_dim_v: head_dim,
        kv_type: KvType::F16,
        n_blocks: 4,
    })
    .unwrap()
}

/// Two tokens, two query heads on one KV head, one sink logit above every
/// score (head 0) and one below (head 1).
#[test]
fn attention_with_sinks_matches_softmax_with_sink() {
    let c = CpuBackend::new();
    let mut cache = one_layer_cache(&c, 1, 4);
    let q = [
        0.5f32, -1.0, 0.25, 2.0, 1.5, 0.5, -0.75, 0.125, // token 0, heads 0 and 1
        -0.5, 1.0, 1.0, 0.5, 0.25, -2.0, 0.5, 1.0, // token 1
    ];
    let k = [1.0f32, 0.5, -0.5, 0.25, -0.25, 1.5, 0.75, -1.0];
    let v = [0.5f32, -1.0, 2.0, 0.25, 1.5, 0.75, -0.5, -2.0];
    let sinks = [3.0f32, -1.5];
    let table: [u32; 1] = [2];
    let tables: [&[u32]; 1] = [&table];
    let batch = AttentionBatch {
        positions: &[0, 1],
        token_seq: &[0, 0],
        block_tables: &tables,
        n_heads: 2,
        scale: 0.5,
        scale_query: false,
        window: None,
        sinks: Some(&sinks),
        decode: &[],
        tiled: &[],
    };
    let out = c
        .act_to_host(
            &c.attention(
                &mut cache,
                0,
                &c.act_from_host(&q, 2, 8).unwrap(),
                Some((
                    &c.act_from_host(&k, 2, 4).unwrap(),
                    &c.act_from_host(&v, 2, 4).unwrap(),
                )),
                &batch,
            )
            .unwrap(),
        )
        .unwrap();
    for (i, (&got, &want)) in out.iter().zip(&SINK_ATTENTION).enumerate() {
        assert!((got - want).abs() < 2e-3, "value {i}: {got} vs {want}");
    }
}

/// A sink of -inf adds exp(-inf) = 0 to the denominator: the same bits as
/// no sinks (GQA, a sliding window, a 70-token prompt).
#[test]
fn minus_infinite_sinks_change_nothing() {
    let c = CpuBackend::new();
    let (n_heads, n_kv_heads, hd, n) = (6usize, 2usize, 64usize, 70usize);
    let val = |i: usize, m: usize| ((i * m % 211) as f32 - 105.0) / 60.0;
    let q: Vec<f32> = (0..n * n_heads * hd).map(|i| val(i, 17)).collect();
    let k: Vec<f32> = (0..n * n_kv_heads * hd).map(|i| val(i, 29)).collect();
    let v: Vec<f32> = (0..n * n_kv_heads * hd).map(|i| val(i, 41)).collect();
    let positions: Vec<u32> = (0..n as u32).collect();
    let seq = vec![0u32; n];
    let table: [u32; 3] = [3, 0, 1];
    let tables: [&[u32]; 1] = [&table];
    let sinks = vec![f32::NEG_INFINITY; n_heads];
    let run = |sinks: Option<&[f32]>| {
        let mut cache = one_layer_cache(&c, n_kv_heads, hd);
        let batch = AttentionBatch {
            positions: &positions,
            token_seq: &seq,
            block_tables: &tables,
            n_heads,
            scale: 0.125,
            scale_query: false,
            window: Some(20),
            sinks,
            decode: &[],
            tiled: &[],
        };
        c.act_to_host(
            &c.attention(
                &mut cache,
                0,
                &c.act_from_host(&q, n, n_heads * hd).unwrap(),
                Some((
                    &c.act_from_host(&k, n, n_kv_heads * hd).unwrap(),
                    &c.act_from_host(&v, n, n_kv_heads * hd).unwrap(),
                )),
                &batch,
            )
            .unwrap(),
        )
        .unwrap()
    };
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    assert_eq!(bits(run(None)), bits(run(Some(&sinks))));
}

#[test]
fn attention_temperature_follows_llama_cpp() {
    let positions = [0u32, 1, 16383, 16384, 50000, 1_000_000];
    let scales = attn_temperature_scales(&positions, 16384, 0.1);
    assert_eq!(scales, ATTN_TEMPERATURE);
    let c = CpuBackend::new();
    let x: Vec<f32> = (0..positions.len() * 3).map(|i| i as f32 - 4.5).collect();
    let mut a = c.act_from_host(&x, positions.len(), 3).unwrap();
    c.attn_temperature(&mut a, &positions, 16384, 0.1).unwrap();
    let want: Vec<f32> = x
        .iter()
        .enumerate()
        .map(|(i, v)| v * scales[i / 3])
        .collect();
    assert_eq!(c.act_to_host(&a).unwrap(), want);
}
