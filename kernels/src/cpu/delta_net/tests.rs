//! The DeltaNet ops against f64 references written from the definitions
//! (not from the ggml-ordered code), on seeded random inputs, and the
//! invariant that a prompt run token by token (carrying the states) gives
//! the same bits as one call.
//!
//! Tolerances (f32 against f64):
//! - conv: each output is 4 products fused into an f32 sum, so it is within
//!   `d_conv` roundings of the exact sum: `|y − ref| ≤ d_conv · ε₃₂ ·
//!   Σ|u·w|` (ε₃₂ = 2⁻²³), a bound, not a guess.
//! - delta rule: every token rounds `S` once per scale, dot and update
//!   (dots of `S` terms), and the error carried in the state does not grow:
//!   `exp(g) ≤ 1` and, with `k` of unit norm and `β ∈ (0, 1)`, the update
//!   `S ← (I − β k kᵀ) S + β k vᵀ` is a contraction on the old state. So
//!   errors stay near `S · ε₃₂` times the magnitudes involved whatever the
//!   prompt length: `|o − ref| ≤ 1e-6 · (1 + |ref|)` on values of order 1,
//!   about 10x the worst seen (9e-8 over these shapes and up to 40 tokens;
//!   the test prints it).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::super::f32_sums::dot_f32_ggml;
use super::{gated_delta_net, ssm_conv, DeltaNetInput, DeltaNetShape};

const SEED: u64 = 0x64_656c_7461;
const PROMPTS: [usize; 3] = [1, 5, 40];

fn uniform(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// `y[t][ch] = Σ_i u[t+i][ch] · w[ch][i]`, `u = [state; x]`, in f64.
fn conv_reference(
    x: &[f32],
    state: &[f32],
    w: &[f32],
    channels: usize,
    d_conv: usize,
) -> (Vec<f64>, Vec<f64>) {
    let n_tokens = x.len() / channels;
    let history = d_conv - 1;
    let u = |r: usize, ch: usize| -> f32 {
        if r < history {
            state[r * channels + ch]
        } else {
            x[(r - history) * channels + ch]
        }
    };
    let mut y = vec![0f64; n_tokens * channels];
    let mut bound = vec![0f64; n_tokens * channels];
    for t in 0..n_tokens {
        for ch in 0..channels {
            for i in 0..d_conv {
                let p = u(t + i, ch) as f64 * w[ch * d_conv + i] as f64;
                y[t * channels + ch] += p;
                bound[t * channels + ch] += p.abs();
            }
        }
    }
    (y, bound)
}

#[test]
fn ssm_conv_matches_f64_and_carries_its_state() {
    let (channels, d_conv) = (48, 4);
    let history = d_conv - 1;
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let w = uniform(&mut rng, channels * d_conv, -0.5, 0.5);
    for n_tokens in PROMPTS {
        // A state left by earlier tokens, as mid-sequence.
        let state0 = uniform(&mut rng, history * channels, -1.0, 1.0);
        let x = uniform(&mut rng, n_tokens * channels, -1.0, 1.0);

        let mut state = state0.clone();
        let y = ssm_conv(&x, n_tokens, channels, &mut state, &w, d_conv).unwrap();
        let (want, bound) = conv_reference(&x, &state0, &w, channels, d_conv);
        for (i, ((&y, &r), &b)) in y.iter().zip(&want).zip(&bound).enumerate() {
            let tol = d_conv as f64 * f32::EPSILON as f64 * b;
            assert!(
                (y as f64 - r).abs() <= tol,
                "conv T={n_tokens} value {i}: {y} vs {r} (tol {tol:e}), seed {SEED:#x}"
            );
        }
        // The new state is the last d_conv - 1 rows of [state0; x].
        let mut u = state0.clone();
        u.extend_from_slice(&x);
        assert_eq!(state, u[n_tokens * channels..], "conv T={n_tokens} state");

        // Token by token, carrying the state: the same bits.
        let mut step_state = state0.clone();
        let mut steps = Vec::new();
        for x_t in x.chunks_exact(channels) {
            steps.extend(ssm_conv(x_t, 1, channels, &mut step_state, &w, d_conv).unwrap());
        }
        assert_eq!(bits(&steps), bits(&y), "conv T={n_tokens}: steps vs batch");
        assert_eq!(bits(&step_state), bits(&state), "conv T={n_tokens}: state");
    }
}

#[test]
fn ssm_conv_from_zero_state_starts_the_window_at_the_first_token() {
    let (channels, d_conv) = (3, 4);
    let w: Vec<f32> = (0..channels * d_conv).map(|i| i as f32).collect();
    let x = [1.0, 2.0, 3.0];
    let mut state = vec![0f32; (d_conv - 1) * channels];
    let y = ssm_conv(&x, 1, channels, &mut state, &w, d_conv).unwrap();
    // Only the newest tap (w[ch][3]) sees a nonzero input.
    assert_eq!(y, [3.0, 2.0 * 7.0, 3.0 * 11.0]);
    assert_eq!(state, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0]);
}

#[test]
fn ssm_conv_refuses_mismatched_shapes() {
    let mut state = vec![0f32; 3 * 4];
    assert!(ssm_conv(&[0.0; 7], 2, 4, &mut state, &[0.0; 16], 4).is_err());
    assert!(ssm_conv(&[0.0; 8], 2, 4, &mut state, &[0.0; 15], 4).is_err());
    assert!(ssm_conv(&[0.0; 8], 2, 4, &mut state[..11], &[0.0; 16], 4).is_err());
    assert!(ssm_conv(&[], 0, 4, &mut [], &[], 0).is_err());
}

/// Inputs as the graph hands them to the op: q, k of unit norm per head,
/// `g = −softplus(·)·exp(A_log) ≤ 0`, `β = sigmoid(·)`.
struct Inputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    g: Vec<f32>,
    beta: Vec<f32>,
    n_tokens: usize,
}

impl Inputs {
    fn random(rng: &mut ChaCha8Rng, shape: DeltaNetShape, n_tokens: usize) -> Self {
        let s = shape.head_dim;
        let mut unit_rows = |n: usize| {
            let mut x = uniform(rng, n, -1.0, 1.0);
            for head in x.chunks_exact_mut(s) {
                let norm = head.iter().map(|v| v * v).sum::<f32>().sqrt();
                head.iter_mut().for_each(|v| *v /= norm);
            }
            x
        };
        let q = unit_rows(n_tokens * shape.n_k_heads * s);
        let k = unit_rows(n_tokens * shape.n_k_heads * s);
        let n_gates = n_tokens * shape.n_v_heads;
        Inputs {
            q,
            k,
            v: uniform(rng, n_tokens * shape.n_v_heads * s, -1.0, 1.0),
            g: uniform(rng, n_gates, -4.0, 0.0)
                .into_iter()
                .map(|a| -(1.0 + a.exp()).ln() * 0.5)
                .collect(),
            beta: uniform(rng, n_gates, -4.0, 4.0)
                .into_iter()
                .map(|b| 1.0 / (1.0 + (-b).exp()))
                .collect(),
            n_tokens,
        }
    }

    fn view(&self) -> DeltaNetInput<'_> {
        DeltaNetInput {
            q: &self.q,
            k: &self.k,
            v: &self.v,
            g: &self.g,
            beta: &self.beta,
            n_tokens: self.n_tokens,
        }
    }

    /// Token `t` alone.
    fn token(&self, shape: DeltaNetShape, t: usize) -> DeltaNetInput<'_> {
        let (qk, v, gb) = (
            shape.n_k_heads * shape.head_dim,
            shape.n_v_heads * shape.head_dim,
            shape.n_v_heads,
        );
        DeltaNetInput {
            q: &self.q[t * qk..(t + 1) * qk],
            k: &self.k[t * qk..(t + 1) * qk],
            v: &self.v[t * v..(t + 1) * v],
            g: &self.g[t * gb..(t + 1) * gb],
            beta: &self.beta[t * gb..(t + 1) * gb],
            n_tokens: 1,
        }
    }
}

/// The gated delta rule from its definition, in f64, with the state
/// `S[i][j]` (key `i`, value `j`) in natural order. Value head `h` uses key
/// head `h mod H_k`. Returns the outputs and the final state in the op's
/// transposed layout.
fn delta_rule_reference(shape: DeltaNetShape, x: &Inputs, state0: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let DeltaNetShape {
        head_dim: s,
        n_k_heads: hk,
        n_v_heads: hv,
    } = shape;
    let mut out = vec![0f64; x.n_tokens * hv * s];
    let mut state_out = vec![0f64; hv * s * s];
    for h in 0..hv {
        let kh = h % hk;
        // S[i][j] from the op's layout state[h][j][i].
        let mut st = vec![vec![0f64; s]; s];
        for (i, row) in st.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = state0[(h * s + j) * s + i] as f64;
            }
        }
        for t in 0..x.n_tokens {
            let q = |i: usize| x.q[(t * hk + kh) * s + i] as f64;
            let k = |i: usize| x.k[(t * hk + kh) * s + i] as f64;
            let v = |j: usize| x.v[(t * hv + h) * s + j] as f64;
            let decay = (x.g[t * hv + h] as f64).exp();
            let beta = x.beta[t * hv + h] as f64;
            st.iter_mut().flatten().for_each(|v| *v *= decay);
            // kv_mem = Sᵀk; δ = β (v − kv_mem); S += k δᵀ; o = Sᵀq / √S.
            let delta: Vec<f64> = (0..s)
                .map(|j| beta * (v(j) - (0..s).map(|i| st[i][j] * k(i)).sum::<f64>()))
                .collect();
            for (i, row) in st.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v += k(i) * delta[j];
                }
            }
            for j in 0..s {
                let o = (0..s).map(|i| st[i][j] * q(i)).sum::<f64>();
                out[(t * hv + h) * s + j] = o / (s as f64).sqrt();
            }
        }
        for (i, row) in st.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                state_out[(h * s + j) * s + i] = v;
            }
        }
    }
    (out, state_out)
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// Worst `|a − ref| / (1 + |ref|)`.
fn worst_error(a: &[f32], reference: &[f64]) -> f64 {
    a.iter()
        .zip(reference)
        .map(|(&a, &r)| (a as f64 - r).abs() / (1.0 + r.abs()))
        .fold(0.0, f64::max)
}

const DELTA_RULE_TOL: f64 = 1e-6;

#[test]
fn gated_delta_net_matches_f64_reference() {
    let shapes = [
        // H_v = H_k, and the GQA-style 2 key heads for 4 value heads.
        (16, 3, 3),
        (32, 2, 4),
        // Qwen3.5's real head size: ggml_vec_dot_f32's 64-value SIMD steps.
        (128, 1, 2),
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(SEED ^ 1);
    for (head_dim, n_k_heads, n_v_heads) in shapes {
        let shape = DeltaNetShape {
            head_dim,
            n_k_heads,
            n_v_heads,
        };
        for n_tokens in PROMPTS {
            let x = Inputs::random(&mut rng, shape, n_tokens);
            // A mid-sequence state of the magnitude the recurrence keeps.
            let state0 = uniform(&mut rng, shape.state_len(), -0.5, 0.5);
            let mut state = state0.clone();
            let o = gated_delta_net(shape, x.view(), &mut state).unwrap();
            let (want_o, want_state) = delta_rule_reference(shape, &x, &state0);
            let (err_o, err_s) = (worst_error(&o, &want_o), worst_error(&state, &want_state));
            eprintln!("{shape:?} T={n_tokens}: worst error output {err_o:.2e}, state {err_s:.2e}");
            assert!(
                err_o <= DELTA_RULE_TOL && err_s <= DELTA_RULE_TOL,
                "{shape:?} T={n_tokens}: error {err_o:e} (output), {err_s:e} (state) \
                 above {DELTA_RULE_TOL:e}, seed {:#x}",
                SEED ^ 1
            );
        }
    }
}

#[test]
fn gated_delta_net_token_by_token_equals_one_call() {
    let mut rng = ChaCha8Rng::seed_from_u64(SEED ^ 2);
    for (head_dim, n_k_heads, n_v_heads) in [(16, 2, 4), (32, 2, 2), (128, 1, 2)] {
        let shape = DeltaNetShape {
            head_dim,
            n_k_heads,
            n_v_heads,
        };
        for n_tokens in PROMPTS {
            let x = Inputs::random(&mut rng, shape, n_tokens);
            let state0 = vec![0f32; shape.state_len()];
            let mut state = state0.clone();
            let o = gated_delta_net(shape, x.view(), &mut state).unwrap();

            let mut step_state = state0;
            let mut steps = Vec::new();
            for t in 0..n_tokens {
                steps.extend(gated_delta_net(shape, x.token(shape, t), &mut step_state).unwrap());
            }
            let what = format!("{shape:?} T={n_tokens}, seed {:#x}", SEED ^ 2);
            assert_eq!(bits(&steps), bits(&o), "{what}: outputs");
            assert_eq!(bits(&step_state), bits(&state), "{what}: state");
        }
    }
}

#[test]
fn gated_delta_net_maps_value_heads_to_key_heads_tiled() {
    // Two key heads, four value heads: value heads 0 and 2 read key head 0,
    // 1 and 3 key head 1 (ggml: iq1 = iv1 % neq1). With the same v, g, β
    // for every head, heads h and h + 2 must agree and h, h + 1 differ.
    let shape = DeltaNetShape {
        head_dim: 16,
        n_k_heads: 2,
        n_v_heads: 4,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(SEED ^ 3);
    let mut x = Inputs::random(&mut rng, shape, 3);
    for t in 0..3 {
        let row = shape.n_v_heads * shape.head_dim;
        let v0 = x.v[t * row..t * row + shape.head_dim].to_vec();
        for h in 1..shape.n_v_heads {
            let at = t * row + h * shape.head_dim;
            x.v[at..at + shape.head_dim].copy_from_slice(&v0);
            x.g[t * shape.n_v_heads + h] = x.g[t * shape.n_v_heads];
            x.beta[t * shape.n_v_heads + h] = x.beta[t * shape.n_v_heads];
        }
    }
    let mut state = vec![0f32; shape.state_len()];
    let o = gated_delta_net(shape, x.view(), &mut state).unwrap();
    let head = |t: usize, h: usize| {
        let at = (t * shape.n_v_heads + h) * shape.head_dim;
        bits(&o[at..at + shape.head_dim])
    };
    for t in 0..3 {
        assert_eq!(head(t, 0), head(t, 2));
        assert_eq!(head(t, 1), head(t, 3));
        assert_ne!(head(t, 0), head(t, 1));
    }
}

#[test]
fn gated_delta_net_refuses_bad_shapes() {
    let shape = DeltaNetShape {
        head_dim: 4,
        n_k_heads: 2,
        n_v_heads: 3,
    };
    let x = Inputs {
        q: vec![0.0; 8],
        k: vec![0.0; 8],
        v: vec![0.0; 12],
        g: vec![0.0; 3],
        beta: vec![0.0; 3],
        n_tokens: 1,
    };
    let mut state = vec![0f32; shape.state_len()];
    assert!(gated_delta_net(shape, x.view(), &mut state).is_err());
    let shape = DeltaNetShape {
        n_v_heads: 4,
        ..shape
    };
    let mut state = vec![0f32; shape.state_len() - 1];
    assert!(gated_delta_net(shape, x.view(), &mut state).is_err());
}

#[test]
fn dot_f32_ggml_sums_in_ggml_lanes() {
    // 64 ones then 3 leftovers: lanes hold 1.0 each, reduced to 64, then
    // the leftovers are added; and an order-sensitive case where the
    // lane split differs from a left-to-right sum.
    let x = vec![1f32; 67];
    assert_eq!(dot_f32_ggml(&x, &x), 67.0);
    let mut x = vec![0f32; 64];
    x[0] = 1e8;
    x[16] = 1.0;
    x[32] = -1e8;
    // Sequential: (1e8 + 1) rounds to 1e8, then − 1e8 = 0. ggml's lanes:
    // acc0[0] = 1e8, acc1[0] = 1, acc2[0] = −1e8; (acc0 + acc2) + acc1 = 1.
    let ones = vec![1f32; 64];
    assert_eq!(dot_f32_ggml(&x, &ones), 1.0);
    let sequential = x.iter().fold(0f32, |s, &v| s + v);
    assert_eq!(sequential, 0.0);
}
