use super::{reduce_add_16, route, soft_max, Gating};

fn close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= 1e-6 * w.abs().max(1.0),
            "{got:?} vs {want:?}"
        );
    }
}

#[test]
fn softmax_gating_picks_the_largest_and_normalizes() {
    // Two tokens of four experts.
    let logits = [1.0, 3.0, 2.0, 0.0, -1.0, -2.0, 5.0, 4.0];
    let (ids, w) = route(&logits, 4, 2, Gating::Softmax, false, 1.0);
    assert_eq!(ids, [1, 2, 2, 3]);
    let s0: f32 = [1f32, 3.0, 2.0, 0.0].iter().map(|v| (v - 3.0).exp()).sum();
    let s1: f32 = [-1f32, -2.0, 5.0, 4.0]
        .iter()
        .map(|v| (v - 5.0).exp())
        .sum();
    close(
        &w,
        &[1.0 / s0, (-1f32).exp() / s0, 1.0 / s1, (-1f32).exp() / s1],
    );
    // Normalized over the two chosen: e/(1+e) and 1/(1+e), whatever the rest.
    let e = std::f32::consts::E;
    let (_, w) = route(&logits, 4, 2, Gating::Softmax, true, 1.0);
    close(
        &w,
        &[
            e / (1.0 + e),
            1.0 / (1.0 + e),
            e / (1.0 + e),
            1.0 / (1.0 + e),
        ],
    );
    // Then scaled.
    let (_, w) = route(&logits, 4, 2, Gating::Softmax, true, 2.5);
    close(&w[..2], &[2.5 * e / (1.0 + e), 2.5 / (1.0 + e)]);
}

#[test]
fn softmax_weight_gating_chooses_by_logit() {
    // The chosen logits differ by ln 3: weights 3/4 and 1/4.
    let logits = [0.5, 2.0, -1.0, 2.0 - 3f32.ln()];
    let (ids, w) = route(&logits, 4, 2, Gating::SoftmaxWeight, false, 1.0);
    assert_eq!(ids, [1, 3]);
    close(&w, &[0.75, 0.25]);
}

#[test]
fn sigmoid_gating_and_ties() {
    let (ids, w) = route(&[0.0, 10.0, -10.0], 3, 1, Gating::Sigmoid, false, 1.0);
    assert_eq!(ids, [1]);
    close(&w, &[1.0 / (1.0 + (-10f32).exp())]);
    let (_, w) = route(&[0.0, 10.0, -10.0], 3, 1, Gating::Sigmoid, true, 1.0);
    assert_eq!(w, [1.0]);
    // Equal probabilities: the lower id first.
    let (ids, w) = route(&[1.0, 1.0, 0.0, 1.0], 4, 3, Gating::Sigmoid, false, 1.0);
    assert_eq!(ids, [0, 1, 3]);
    assert!(w[0] == w[1] && w[1] == w[2]);
    // A sum below f16's smallest normal is clamped before dividing.
    let (_, w) = route(&[-20.0, -30.0], 2, 1, Gating::Sigmoid, true, 1.0);
    let p = 1.0 / (1.0 + 20f32.exp());
    assert_eq!(w, [p / (1.0 / 16384.0)]);
}

/// Rows of 16+ experts take ggml's 16-lane `ggml_v_expf` and its
/// reduction tree; the result is a distribution, within an ulp or two of
/// the plain `expf` one.
#[test]
fn wide_softmax_follows_the_lane_path() {
    let x: Vec<f32> = (0..37)
        .map(|i| ((i * 7919) % 23) as f32 * 0.37 - 4.0)
        .collect();
    let mut y = vec![0f32; 37];
    soft_max(&x, &mut y);
    let max = x.iter().cloned().fold(f32::MIN, f32::max);
    let sum: f64 = x.iter().map(|v| ((v - max) as f64).exp()).sum();
    for (g, v) in y.iter().zip(&x) {
        let want = (((v - max) as f64).exp() / sum) as f32;
        assert!(
            (g - want).abs() <= 4.0 * f32::EPSILON * want,
            "{g} vs {want}"
        );
    }
    // The tree: ((0+8)+(4+12)) + ((2+10)+(6+14)) + ((1+9)+(5+13)) + ((3+11)+(7+15)).
    let v: Vec<f32> = (0..16).map(|i| 1.0 + i as f32 * 1e-7).collect();
    let h8: Vec<f32> = (0..8).map(|i| v[i] + v[i + 8]).collect();
    let h4: Vec<f32> = (0..4).map(|i| h8[i] + h8[i + 4]).collect();
    assert_eq!(reduce_add_16(&v), (h4[0] + h4[2]) + (h4[1] + h4[3]));
}

/// Two tokens of 32 experts (and, from the same logits, two of 8), routed
/// by ggml itself: llama.cpp's ggml-cpu (the commit vendored in
/// llama_cpp_python 0.3.36, built natively on an AVX-512 x86 CPU, GCC)
/// computing `build_moe_ffn`'s router ops one thread, with this program
/// (`gcc -O2 -I ggml/include route.c -lggml -lggml-base -lggml-cpu -lm`):
///
/// ```c
/// // logits l[t * 32 + i] = (float)((i * 7919 + t * 13) % 23) * 0.37f - 4.0f + 0.013f * i
/// probs = gating == 0 ? ggml_soft_max(ctx, logits) : gating == 2 ? ggml_sigmoid(ctx, logits) : logits;
/// sel = ggml_argsort_top_k(ctx, probs, n_used);
/// w = ggml_get_rows(ctx, ggml_reshape_3d(ctx, probs, 1, n_expert, n_tokens), sel);
/// if (gating == 1) w = reshape_3d(ggml_soft_max(ctx, reshape_2d(w, n_used, n_tokens)), 1, n_used, n_tokens);
/// if (norm) { w2 = reshape_2d(w, n_used, n_tokens);
///             s = ggml_clamp(ctx, ggml_sum_rows(ctx, w2), 6.103515625e-5, INFINITY);
///             w = reshape_3d(ggml_div(ctx, w2, s), 1, n_used, n_tokens); }
/// if (scale != 0.0f && scale != 1.0f) w = ggml_scale(ctx, w, scale);
/// ggml_graph_compute_with_ctx(ctx, gf, 1);  // print sel and the bits of w
/// ```
#[test]
fn route_gives_ggml_cpus_bits() {
    /// Gating, norm, scale, n_expert, n_used, ids, weight bits.
    type Case<'a> = (Gating, bool, f32, usize, usize, &'a [u32], [u32; 8]);
    let logits: Vec<f32> = (0..2)
        .flat_map(|t| {
            (0..32).map(move |i| ((i * 7919 + t * 13) % 23) as f32 * 0.37 - 4.0 + 0.013 * i as f32)
        })
        .collect();
    // The logits as the C program had them.
    assert_eq!(logits[1].to_bits(), 0xbfb2_d0e4);
    assert_eq!(logits[63].to_bits(), 0xc066_3540);
    let ids_32 = [13, 26, 3, 16, 21, 11, 24, 1];
    let cases: [Case; 4] = [
        (
            Gating::Softmax,
            true,
            1.0,
            32,
            4,
            &ids_32,
            [
                0x3eaf4f83, 0x3e8f637c, 0x3e54a991, 0x3e2df071, 0x3ecf3ede, 0x3e7b66cd, 0x3e4d9fdf,
                0x3e187b98,
            ],
        ),
        (
            Gating::Softmax,
            false,
            2.5,
            32,
            4,
            &ids_32,
            [
                0x3f0e7f91, 0x3ee91a23, 0x3eacdbec, 0x3e8d6234, 0x3f267c8e, 0x3ec9f558, 0x3ea52f2e,
                0x3e74fcea,
            ],
        ),
        (
            Gating::SoftmaxWeight,
            false,
            1.0,
            32,
            4,
            &ids_32,
            [
                0x3eaf4f83, 0x3e8f637c, 0x3e54a993, 0x3e2df071, 0x3ecf3ede, 0x3e7b66cf, 0x3e4d9fdf,
                0x3e187b97,
            ],
        ),
        (
            Gating::Sigmoid,
            true,
            2.5,
            32,
            4,
            &ids_32,
            [
                0x3f20ff4f, 0x3f2085ea, 0x3f1f9f92, 0x3f1edb34, 0x3f219c84, 0x3f205da2, 0x3f1fab5f,
                0x3f1e5a7a,
            ],
        ),
    ];
    for (gating, norm, scale, n_expert, n_used, want_ids, want_bits) in cases {
        let (ids, w) = route(&logits, n_expert, n_used, gating, norm, scale);
        let what = format!("{gating:?} norm {norm} scale {scale}");
        assert_eq!(ids, want_ids, "{what}");
        let bits: Vec<u32> = w.iter().map(|v| v.to_bits()).collect();
        assert_eq!(bits, want_bits, "{what}");
    }
    // 8 experts (the first 16 logits as two tokens): expf only, no lanes.
    let (ids, w) = route(&logits[..16], 8, 2, Gating::Softmax, false, 1.0);
    assert_eq!(ids, [3, 6, 5, 1]);
    let bits: Vec<u32> = w.iter().map(|v| v.to_bits()).collect();
    assert_eq!(bits, [0x3f1e557f, 0x3e9d1874, 0x3f480b31, 0x3deee23d]);
}
