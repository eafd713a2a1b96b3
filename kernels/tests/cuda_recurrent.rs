//! Qwen3.5's ops on the CUDA backend against the CPU backend (the
//! reference, ggml's arithmetic) on fresh random inputs: the element-wise
//! ops around the DeltaNet mixer, the short convolution and the gated delta
//! rule over state slots (several sequences with different run lengths, the
//! states carried into a second batch, a slot cleared in between), input
//! either backend refuses, and the recurrent ops inside recorded CUDA
//! graphs. Runs on the CUDA emulator in CI (a real GPU where there is one),
//! as `cuda_ops.rs` does.
//!
//! Tolerances (relative L2 error, ||gpu - cpu|| / ||cpu||), per op:
//! - f32 element-wise ops and `rms_norm_plain`: 1e-5, float rounding (the
//!   GPU's expf/logf/tanhf, the norm's sum in another order);
//! - `ssm_conv` output and state: 0, bit for bit: the kernel rounds and
//!   fuses the products as the CPU's (GCC's) loop does, and the state is a
//!   copy;
//! - `delta_net` output and state: 1e-5. Each dot product over a head
//!   (m·k, m·q) is summed in another order (32-lane trees against ggml's
//!   AVX-512 chunks), a few ulp apart, and the state carries those through
//!   the tokens of a run; g ≤ 0 and L2-normed keys keep the state bounded,
//!   so they do not grow (measured: about 1e-7).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use strata_kernels::cuda::{CudaBackend, MAX_DELTA_NET_HEAD_DIM};
use strata_kernels::{
    Backend, BatchIndex, CpuBackend, DeltaNetShape, KernelError, RecurrentBatch, Unary,
};
use strata_model::GgmlType;

mod common;
use common::*;

const ELEMENTWISE_TOL: f64 = 1e-5;
const DELTA_NET_TOL: f64 = 1e-5;

fn both<B: Backend>(b: &B, x: &[f32], rows: usize, cols: usize) -> B::Act {
    b.act_from_host(x, rows, cols).unwrap()
}

fn check(what: &str, got: &[f32], want: &[f32], tol: f64) {
    let e = rel_err(got, want);
    assert!(e <= tol, "{what}: {e:.2e} (tolerance {tol:.0e})");
}

#[test]
fn deltanet_elementwise_ops_match_cpu() {
    let (g, c) = (gpu(), CpuBackend::new());
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    // (rows, cols, group): widths below, at and past a 16-lane vector.
    for &(rows, cols, group) in &[(1usize, 12usize, 4usize), (3, 256, 128), (7, 4100, 4100)] {
        let x = random(&mut rng, rows * cols, 25.0);
        let (xg, xc) = (both(&g, &x, rows, cols), both(&c, &x, rows, cols));
        let on = |f: &dyn Fn(&mut CudaAct), h: &dyn Fn(&mut CpuAct)| {
            let (mut a, mut b) = (both(&g, &x, rows, cols), both(&c, &x, rows, cols));
            f(&mut a);
            h(&mut b);
            (g.act_to_host(&a).unwrap(), c.act_to_host(&b).unwrap())
        };
        for f in [
            Unary::Sigmoid,
            Unary::Softplus,
            Unary::Silu,
            Unary::Tanh,
            Unary::Gelu,
        ] {
            let (got, want) = on(&|a| g.unary(a, f).unwrap(), &|b| c.unary(b, f).unwrap());
            check(
                &format!("{f:?} {rows}x{cols}"),
                &got,
                &want,
                ELEMENTWISE_TOL,
            );
        }
        let (got, want) = on(&|a| g.scale(a, -0.37).unwrap(), &|b| {
            c.scale(b, -0.37).unwrap()
        });
        check("scale", &got, &want, ELEMENTWISE_TOL);
        for y_cols in [cols, 1] {
            let y = random(&mut rng, rows * y_cols, 2.0);
            let (yg, yc) = (both(&g, &y, rows, y_cols), both(&c, &y, rows, y_cols));
            let (got, want) = on(&|a| g.mul(a, &yg).unwrap(), &|b| c.mul(b, &yc).unwrap());
            check(
                &format!("mul by {rows}x{y_cols}"),
                &got,
                &want,
                ELEMENTWISE_TOL,
            );
        }
        let w = random(&mut rng, group, 2.0);
        let (wg, wc) = (vector(&g, &w), vector(&c, &w));
        let (got, want) = on(&|a| g.mul_weight(a, &wg).unwrap(), &|b| {
            c.mul_weight(b, &wc).unwrap()
        });
        check("mul_weight", &got, &want, ELEMENTWISE_TOL);
        check(
            "rms_norm_plain",
            &g.act_to_host(&g.rms_norm_plain(&xg, group, 1e-6).unwrap())
                .unwrap(),
            &c.act_to_host(&c.rms_norm_plain(&xc, group, 1e-6).unwrap())
                .unwrap(),
            ELEMENTWISE_TOL,
        );
        for (start, len) in [(0, cols), (1, cols - 3), (cols / 2, cols - cols / 2)] {
            let got = g.act_to_host(&g.columns(&xg, start, len).unwrap()).unwrap();
            let want = c.act_to_host(&c.columns(&xc, start, len).unwrap()).unwrap();
            assert_eq!(got, want, "columns {start}+{len} of {cols}");
        }
    }
}

type CudaAct = <CudaBackend as Backend>::Act;
type CpuAct = <CpuBackend as Backend>::Act;

/// A batch: each sequence's run length and state slot.
struct Runs {
    lens: Vec<usize>,
    slots: Vec<u32>,
}

impl Runs {
    fn token_seq(&self) -> Vec<u32> {
        self.lens
            .iter()
            .enumerate()
            .flat_map(|(s, &n)| std::iter::repeat_n(s as u32, n))
            .collect()
    }
    fn rows(&self) -> usize {
        self.lens.iter().sum()
    }
}

/// Two batches over 5 state slots: a prompt-like one (runs of 3, 1 and 6
/// tokens), then decode-like steps in another slot order, after slot 4
/// was cleared (a new sequence taking it).
fn two_batches() -> [Runs; 2] {
    [
        Runs {
            lens: vec![3, 1, 6],
            slots: vec![2, 0, 4],
        },
        Runs {
            lens: vec![1, 2, 1],
            slots: vec![4, 2, 1],
        },
    ]
}

const SLOTS: usize = 5;
const CLEARED_SLOT: u32 = 4;

/// An op over state slots, on either backend: `x` its inputs, one row per
/// token.
trait StateOp {
    fn run<B: Backend>(
        &self,
        b: &B,
        x: &[B::Act],
        state: &mut B::Act,
        batch: &RecurrentBatch<'_>,
    ) -> B::Act;
}

struct Conv {
    weights: Vec<f32>,
    d_conv: usize,
}

impl StateOp for Conv {
    fn run<B: Backend>(
        &self,
        b: &B,
        x: &[B::Act],
        state: &mut B::Act,
        batch: &RecurrentBatch<'_>,
    ) -> B::Act {
        let channels = self.weights.len() / self.d_conv;
        let dims = [self.d_conv as u64, channels as u64];
        let w = b
            .load_weight("conv1d", GgmlType::F32, &dims, bytemuck_f32(&self.weights))
            .unwrap();
        b.ssm_conv(&x[0], &w, state, batch).unwrap()
    }
}

struct DeltaRule(DeltaNetShape);

impl StateOp for DeltaRule {
    fn run<B: Backend>(
        &self,
        b: &B,
        x: &[B::Act],
        state: &mut B::Act,
        batch: &RecurrentBatch<'_>,
    ) -> B::Act {
        b.delta_net(self.0, &x[0], &x[1], &x[2], &x[3], &x[4], state, batch)
            .unwrap()
    }
}

/// `op` over [`two_batches`] on both backends from the same random states
/// (`state_cols` values a slot, up to `state_scale`), slot [`CLEARED_SLOT`]
/// cleared before the second batch; `inputs` makes a batch's inputs (host
/// values and width) for its token count. Checks each batch's output and
/// the states within `tol`; returns the worst error.
fn compare_over_batches(
    op: &impl StateOp,
    (state_cols, state_scale): (usize, f32),
    tol: f64,
    what: &str,
    rng: &mut ChaCha8Rng,
    inputs: impl Fn(&mut ChaCha8Rng, usize) -> Vec<(Vec<f32>, usize)>,
) -> f64 {
    let (g, c) = (gpu(), CpuBackend::new());
    let s0 = random(rng, SLOTS * state_cols, state_scale);
    let (mut sg, mut sc) = (
        both(&g, &s0, SLOTS, state_cols),
        both(&c, &s0, SLOTS, state_cols),
    );
    let mut worst = 0f64;
    for (i, runs) in two_batches().iter().enumerate() {
        if i == 1 {
            g.zero_rows(&mut sg, &[CLEARED_SLOT]).unwrap();
            c.zero_rows(&mut sc, &[CLEARED_SLOT]).unwrap();
        }
        let rows = runs.rows();
        let x = inputs(rng, rows);
        let token_seq = runs.token_seq();
        let batch = RecurrentBatch {
            token_seq: &token_seq,
            seq_slots: &runs.slots,
        };
        let xg: Vec<_> = x.iter().map(|(v, cols)| both(&g, v, rows, *cols)).collect();
        let xc: Vec<_> = x.iter().map(|(v, cols)| both(&c, v, rows, *cols)).collect();
        let (og, oc) = (
            op.run(&g, &xg, &mut sg, &batch),
            op.run(&c, &xc, &mut sc, &batch),
        );
        assert_eq!(g.act_shape(&og), c.act_shape(&oc), "{what}, batch {i}");
        for (part, got, want) in [
            ("output", g.act_to_host(&og), c.act_to_host(&oc)),
            ("state", g.act_to_host(&sg), c.act_to_host(&sc)),
        ] {
            let (got, want) = (got.unwrap(), want.unwrap());
            worst = worst.max(rel_err(&got, &want));
            check(&format!("{what}, batch {i}: {part}"), &got, &want, tol);
        }
    }
    worst
}

#[test]
fn ssm_conv_matches_cpu_over_slots_and_batches() {
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    // (channels, d_conv): Qwen3.5's 4 taps; 3 (all fused), 6 (mixed), 1.
    for &(channels, d_conv) in &[(64usize, 4usize), (300, 4), (33, 3), (48, 6), (8, 1)] {
        let conv = Conv {
            weights: random(&mut rng, channels * d_conv, 1.0),
            d_conv,
        };
        compare_over_batches(
            &conv,
            ((d_conv - 1) * channels, 1.0),
            0.0,
            &format!("{channels} channels, {d_conv} taps"),
            &mut rng,
            |rng, rows| vec![(random(rng, rows * channels, 2.0), channels)],
        );
    }
}

/// Random delta-rule inputs for `rows` tokens as the graph makes them:
/// q and k L2-normed per head, g = log decay ≤ 0, beta in (0, 1).
fn delta_inputs(rng: &mut ChaCha8Rng, shape: DeltaNetShape, rows: usize) -> Vec<(Vec<f32>, usize)> {
    let s = shape.head_dim;
    let mut normed = |heads: usize| {
        let mut v = random(rng, rows * heads * s, 1.0);
        for h in v.chunks_mut(s) {
            let n = h.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
            h.iter_mut().for_each(|x| *x /= n);
        }
        (v, heads * s)
    };
    let q = normed(shape.n_k_heads);
    let k = normed(shape.n_k_heads);
    let v = (
        random(rng, rows * shape.n_v_heads * s, 1.0),
        shape.n_v_heads * s,
    );
    let hv = shape.n_v_heads;
    let gate: Vec<f32> = (0..rows * hv)
        .map(|_| -rng.random_range(0.0f32..2.0))
        .collect();
    let beta: Vec<f32> = (0..rows * hv)
        .map(|_| rng.random_range(0.05f32..0.95))
        .collect();
    vec![q, k, v, (gate, hv), (beta, hv)]
}

#[test]
fn delta_net_matches_cpu_over_slots_and_batches() {
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    let mut worst = 0f64;
    // (S, H_k, H_v): Qwen3.5's 128 with grouped value heads, heads not a
    // multiple of 32 values (36: warps with uneven rows), the widest the
    // kernel takes.
    for &(s, hk, hv) in &[
        (128usize, 2usize, 4usize),
        (16, 1, 1),
        (36, 3, 6),
        (256, 1, 2),
    ] {
        let shape = DeltaNetShape {
            head_dim: s,
            n_k_heads: hk,
            n_v_heads: hv,
        };
        worst = worst.max(compare_over_batches(
            &DeltaRule(shape),
            (shape.state_len(), 0.1),
            DELTA_NET_TOL,
            &format!("S {s}, {hk} key / {hv} value heads"),
            &mut rng,
            |rng, rows| delta_inputs(rng, shape, rows),
        ));
    }
    println!("delta_net: worst relative error {worst:.2e}");
}

/// Input either backend cannot take is `KernelError::Invalid`, checked
/// before anything runs, never a panic.
fn recurrent_ops_refuse_bad_input<B: Backend>(b: &B) {
    let invalid = |what: &str, r: Result<(), KernelError>| match r {
        Err(KernelError::Invalid(e)) => println!("{what}: {e}"),
        other => panic!("{what}: {other:?}, expected Invalid"),
    };
    let x = b.act_from_host(&[1.0; 12], 2, 6).unwrap();
    let y = b.act_from_host(&[1.0; 4], 2, 2).unwrap();
    let copy = || b.act_from_host(&[1.0; 12], 2, 6).unwrap();
    invalid("mul: widths", b.mul(&mut copy(), &y));
    invalid(
        "mul_weight: length",
        b.mul_weight(&mut copy(), &vector(b, &[1.0; 4])),
    );
    invalid(
        "rms_norm_plain: group",
        b.rms_norm_plain(&x, 4, 1e-6).map(drop),
    );
    invalid(
        "rms_norm_plain: empty group",
        b.rms_norm_plain(&x, 0, 1e-6).map(drop),
    );
    invalid("columns: past the row", b.columns(&x, 4, 3).map(drop));
    invalid("columns: overflow", b.columns(&x, 1, usize::MAX).map(drop));
    invalid("zero_rows", b.zero_rows(&mut copy(), &[0, 2]));
    invalid(
        "copy_rows: past the rows",
        b.copy_rows(&mut copy(), &[0], &[2]),
    );
    invalid("copy_rows: pairs", b.copy_rows(&mut copy(), &[0, 1], &[1]));
    invalid(
        "copy_rows: read and written",
        b.copy_rows(&mut copy(), &[0], &[0]),
    );

    // The conv: 6 channels, 4 taps, 3 slots.
    let (channels, d_conv) = (6usize, 4usize);
    let w = [0.5f32; 24];
    let dims = [d_conv as u64, channels as u64];
    let conv = b
        .load_weight("conv1d", GgmlType::F32, &dims, bytemuck_f32(&w))
        .unwrap();
    let conv_f16 = b
        .load_weight("conv1d", GgmlType::F16, &dims, &[0u8; 48])
        .unwrap();
    let mut state = b.act_zeros(3, (d_conv - 1) * channels).unwrap();
    let batch = |token_seq: &'static [u32], seq_slots: &'static [u32]| RecurrentBatch {
        token_seq,
        seq_slots,
    };
    let good = batch(&[0, 1], &[2, 0]);
    let conv_on = |w: &B::Weight, state: &mut B::Act, batch: &RecurrentBatch<'_>| {
        b.ssm_conv(&x, w, state, batch).map(drop)
    };
    invalid(
        "ssm_conv: slot past the state",
        conv_on(&conv, &mut state, &batch(&[0, 1], &[3, 0])),
    );
    invalid(
        "ssm_conv: shared slot",
        conv_on(&conv, &mut state, &batch(&[0, 1], &[1, 1])),
    );
    invalid(
        "ssm_conv: sequence past the slots",
        conv_on(&conv, &mut state, &batch(&[0, 2], &[1, 0])),
    );
    invalid(
        "ssm_conv: token count",
        conv_on(&conv, &mut state, &batch(&[0], &[1])),
    );
    invalid(
        "ssm_conv: F16 weight",
        conv_on(&conv_f16, &mut state, &good),
    );
    let mut narrow_state = b.act_zeros(3, 2 * channels).unwrap();
    invalid(
        "ssm_conv: state width",
        conv_on(&conv, &mut narrow_state, &good),
    );
    conv_on(&conv, &mut state, &good).unwrap();
    let split = batch(&[0, 1, 0], &[0, 1]);
    let x3 = b.act_from_host(&[1.0; 18], 3, 6).unwrap();
    invalid(
        "ssm_conv: a sequence in two runs",
        b.ssm_conv(&x3, &conv, &mut state, &split).map(drop),
    );

    // The delta rule: S = 4, one key head, two value heads.
    let shape = DeltaNetShape {
        head_dim: 4,
        n_k_heads: 1,
        n_v_heads: 2,
    };
    let act = |cols: usize| b.act_from_host(&vec![0.5; 2 * cols], 2, cols).unwrap();
    let (qk, v, gb) = (act(4), act(8), act(2));
    let mut dstate = b.act_zeros(3, shape.state_len()).unwrap();
    let delta =
        |shape: DeltaNetShape, q: &B::Act, state: &mut B::Act, batch: &RecurrentBatch<'_>| {
            b.delta_net(shape, q, &qk, &v, &gb, &gb, state, batch)
                .map(drop)
        };
    invalid("delta_net: q width", delta(shape, &v, &mut dstate, &good));
    invalid(
        "delta_net: value heads not a multiple of key heads",
        delta(
            DeltaNetShape {
                n_k_heads: 3,
                ..shape
            },
            &qk,
            &mut dstate,
            &good,
        ),
    );
    invalid(
        "delta_net: slot past the state",
        delta(shape, &qk, &mut dstate, &batch(&[0, 1], &[0, 3])),
    );
    let mut narrow = b.act_zeros(3, 8).unwrap();
    invalid(
        "delta_net: state width",
        delta(shape, &qk, &mut narrow, &good),
    );
    delta(shape, &qk, &mut dstate, &good).unwrap();
}

#[test]
fn recurrent_ops_refuse_bad_input_on_both_backends() {
    recurrent_ops_refuse_bad_input(&CpuBackend::new());
    recurrent_ops_refuse_bad_input(&gpu());
}

/// A state row saved to a snapshot row and restored over a slot (the
/// prefix cache's state snapshots) is a copy, bit for bit, on both
/// backends; the other rows stay as they were.
#[test]
fn copy_rows_moves_whole_state_rows_on_both_backends() {
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    let (rows, cols) = (6usize, 1000usize);
    let s0 = random(&mut rng, rows * cols, 1.0);
    let (g, c) = (gpu(), CpuBackend::new());
    let (mut sg, mut sc) = (both(&g, &s0, rows, cols), both(&c, &s0, rows, cols));
    // Save slots 0 and 2 as snapshots 4 and 5, then restore 5 over slot 1.
    for (from, to) in [(&[0u32, 2][..], &[4u32, 5][..]), (&[5], &[1])] {
        g.copy_rows(&mut sg, from, to).unwrap();
        c.copy_rows(&mut sc, from, to).unwrap();
    }
    let mut want = s0.clone();
    for (f, t) in [(0usize, 4usize), (2, 5), (5, 1)] {
        let row = want[f * cols..(f + 1) * cols].to_vec();
        want[t * cols..(t + 1) * cols].copy_from_slice(&row);
    }
    assert_eq!(c.act_to_host(&sc).unwrap(), want, "CPU");
    assert_eq!(g.act_to_host(&sg).unwrap(), want, "CUDA");
}

/// A state row read to the host and written back (a snapshot on disk), on
/// both backends; a row past the state or a short row is refused.
#[test]
fn state_rows_go_to_the_host_and_back_on_both_backends() {
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    let (rows, cols) = (4usize, 777usize);
    let s0 = random(&mut rng, rows * cols, 1.0);
    let row2 = s0[2 * cols..3 * cols].to_vec();
    let (g, c) = (gpu(), CpuBackend::new());
    let (mut sg, mut sc) = (both(&g, &s0, rows, cols), both(&c, &s0, rows, cols));
    assert_eq!(g.row_to_host(&sg, 2).unwrap(), row2, "CUDA");
    assert_eq!(c.row_to_host(&sc, 2).unwrap(), row2, "CPU");
    g.row_from_host(&mut sg, 0, &row2).unwrap();
    c.row_from_host(&mut sc, 0, &row2).unwrap();
    let mut want = s0.clone();
    want[..cols].copy_from_slice(&row2);
    assert_eq!(g.act_to_host(&sg).unwrap(), want, "CUDA");
    assert_eq!(c.act_to_host(&sc).unwrap(), want, "CPU");
    for (what, err) in [
        ("CUDA row", g.row_to_host(&sg, 4).map(drop)),
        ("CPU row", c.row_to_host(&sc, 4).map(drop)),
        ("CUDA short", g.row_from_host(&mut sg, 1, &row2[1..])),
        ("CPU short", c.row_from_host(&mut sc, 1, &row2[1..])),
        ("CUDA past", g.row_from_host(&mut sg, 9, &row2)),
    ] {
        assert!(
            matches!(err, Err(KernelError::Invalid(_))),
            "{what}: {err:?}"
        );
    }
}

/// Heads wider than the kernel's registers are refused, by name.
#[test]
fn delta_net_heads_past_the_kernel_are_refused() {
    let g = gpu();
    let s = MAX_DELTA_NET_HEAD_DIM + 32;
    let shape = DeltaNetShape {
        head_dim: s,
        n_k_heads: 1,
        n_v_heads: 1,
    };
    let act = |cols: usize| g.act_zeros(1, cols).unwrap();
    let (qkv, gb) = (act(s), act(1));
    let mut state = g.act_zeros(1, shape.state_len()).unwrap();
    let batch = RecurrentBatch {
        token_seq: &[0],
        seq_slots: &[0],
    };
    match g.delta_net(shape, &qkv, &qkv, &qkv, &gb, &gb, &mut state, &batch) {
        Err(KernelError::Invalid(e)) => assert!(e.contains("heads of"), "{e}"),
        other => panic!("{:?}", other.map(drop)),
    }
}

// ---- inside recorded graphs ----

/// A DeltaNet-like layer: conv over the state, SiLU, the split into q, k, v,
/// q and k L2-normed, the delta rule, its output normed, gated and
/// projected back (every new op at least once). `x` has `3 S` columns: one
/// head each of q, k and v.
struct MiniLayer {
    conv: <CudaBackend as Backend>::Weight,
    norm: <CudaBackend as Backend>::Weight,
    out: <CudaBackend as Backend>::Weight,
    conv_state: CudaAct,
    delta_state: CudaAct,
}

const S: usize = 32;

impl MiniLayer {
    fn new(g: &CudaBackend, rng: &mut ChaCha8Rng) -> Self {
        let w = random(rng, 3 * S * 4, 0.5);
        let conv = g
            .load_weight(
                "conv1d",
                GgmlType::F32,
                &[4, 3 * S as u64],
                bytemuck_f32(&w),
            )
            .unwrap();
        MiniLayer {
            conv,
            norm: vector(g, &random(rng, S, 1.0)),
            out: g
                .load_weight(
                    "ssm_out",
                    GgmlType::F32,
                    &[S as u64, 3 * S as u64],
                    bytemuck_f32(&random(rng, 3 * S * S, 0.2)),
                )
                .unwrap(),
            conv_state: g.act_zeros(SLOTS, 3 * 3 * S).unwrap(),
            delta_state: g.act_zeros(SLOTS, S * S).unwrap(),
        }
    }

    fn forward(
        &mut self,
        g: &CudaBackend,
        x: CudaAct,
        batch: &RecurrentBatch<'_>,
    ) -> Result<CudaAct, KernelError> {
        let mut u = g.ssm_conv(&x, &self.conv, &mut self.conv_state, batch)?;
        g.unary(&mut u, Unary::Silu)?;
        let l2 = |a: &CudaAct| -> Result<CudaAct, KernelError> {
            let mut n = g.rms_norm_plain(a, S, 1e-6 / S as f32)?;
            g.scale(&mut n, 1.0 / (S as f32).sqrt())?;
            Ok(n)
        };
        let q = l2(&g.columns(&u, 0, S)?)?;
        let k = l2(&g.columns(&u, S, S)?)?;
        let v = g.columns(&u, 2 * S, S)?;
        let mut gate = g.columns(&x, 0, 1)?;
        g.unary(&mut gate, Unary::Softplus)?;
        g.scale(&mut gate, -1.0)?;
        let mut beta = g.columns(&x, 1, 1)?;
        g.unary(&mut beta, Unary::Sigmoid)?;
        let shape = DeltaNetShape {
            head_dim: S,
            n_k_heads: 1,
            n_v_heads: 1,
        };
        let mut o = g.delta_net(
            shape,
            &q,
            &k,
            &v,
            &gate,
            &beta,
            &mut self.delta_state,
            batch,
        )?;
        g.mul_weight(&mut o, &self.norm)?;
        let mut z = g.columns(&x, S, S)?;
        g.unary(&mut z, Unary::Tanh)?;
        g.mul(&mut o, &z)?;
        g.mul(&mut o, &beta)?;
        // Back to x's width (ssm_out), plus the residual.
        let mut out = g.matmul(&self.out, &o)?;
        g.add_assign(&mut out, &x)?;
        Ok(out)
    }
}

/// Decode steps of two sequences, two tokens and then one each: the slots
/// change from step to step under the same batch shape, so a replay that
/// read the recorded slots would update the wrong states.
fn steps() -> Vec<Runs> {
    let slots = [
        [0u32, 1],
        [3, 2],
        [1, 4],
        [2, 0],
        [4, 3],
        [0, 2],
        [1, 3],
        [3, 4],
    ];
    let mut all: Vec<Runs> = slots
        .iter()
        .map(|s| Runs {
            lens: vec![1, 1],
            slots: s.to_vec(),
        })
        .collect();
    // Same token and sequence counts, other run lengths.
    for lens in [[2usize, 1], [1, 2], [2, 1], [1, 2]] {
        all.push(Runs {
            lens: lens.to_vec(),
            slots: vec![4, 1],
        });
    }
    all
}

/// Every step's output and the final states, with graphs on or off;
/// `index_slots` says at which steps the batch index carries the state
/// slots.
fn run_steps(
    graphs: bool,
    index_slots: impl Fn(usize) -> bool,
    seed: u64,
) -> (Vec<Vec<f32>>, Vec<f32>, u64) {
    let g = gpu();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut layer = MiniLayer::new(&g, &mut rng);
    let mut runs = g.layer_runs();
    runs.set_enabled(graphs);
    let tables: Vec<u32> = vec![0, 1];
    let block_tables: [&[u32]; 2] = [&tables[..1], &tables[1..]];
    let mut outputs = Vec::new();
    for (step, r) in steps().iter().enumerate() {
        let rows = r.rows();
        let token_seq = r.token_seq();
        let positions: Vec<u32> = (0..rows as u32).map(|t| t + step as u32 % 4).collect();
        let index = BatchIndex {
            positions: &positions,
            token_seq: &token_seq,
            block_tables: &block_tables,
            seq_slots: if index_slots(step) { &r.slots } else { &[] },
        };
        let batch = RecurrentBatch {
            token_seq: &token_seq,
            seq_slots: &r.slots,
        };
        let x = random(&mut rng, rows * 3 * S, 1.0);
        let x = g.act_from_host(&x, rows, 3 * S).unwrap();
        let y = g
            .run_layers(&mut runs, &index, x, &mut |x| layer.forward(&g, x, &batch))
            .unwrap();
        outputs.push(g.act_to_host(&y).unwrap());
    }
    let mut states = g.act_to_host(&layer.conv_state).unwrap();
    states.extend(g.act_to_host(&layer.delta_state).unwrap());
    (outputs, states, runs.replays())
}

/// Replayed graphs give what eager steps give, bit for bit, outputs and
/// states, though every step moves the sequences to other slots.
#[test]
fn recurrent_ops_replay_in_graphs_with_each_batch_slots() {
    let seed = seed();
    let (eager, eager_states, none) = run_steps(false, |_| true, seed);
    let (graphed, graphed_states, replays) = run_steps(true, |_| true, seed);
    assert_eq!(none, 0);
    assert!(replays >= 8, "only {replays} steps replayed");
    for (i, (e, g)) in eager.iter().zip(&graphed).enumerate() {
        assert_eq!(e, g, "step {i}: graph and eager differ");
    }
    assert_eq!(eager_states, graphed_states, "states");
}

/// A batch index without the state slots the ops use: nothing is recorded
/// (the ops refuse under capture) and every step runs eagerly, correctly.
#[test]
fn recurrent_ops_without_slots_in_the_index_run_eagerly() {
    let seed = seed();
    let (eager, eager_states, _) = run_steps(false, |_| true, seed);
    let (unindexed, states, replays) = run_steps(true, |_| false, seed);
    assert_eq!(
        replays, 0,
        "a graph was replayed with slots it did not index"
    );
    assert_eq!(eager, unindexed);
    assert_eq!(eager_states, states);
}

/// A graph recorded with the slots in the index is not replayed once the
/// index stops carrying them (its runs would be the last indexed batch's):
/// those steps are recorded again, fail the capture and run eagerly.
#[test]
fn a_graph_with_runs_is_not_replayed_for_a_batch_without() {
    let seed = seed();
    let (eager, eager_states, _) = run_steps(false, |_| true, seed);
    let (graphed, states, replays) = run_steps(true, |step| step < 4, seed);
    assert_eq!(replays, 3, "steps 1 to 3 replay, no later one");
    assert_eq!(eager, graphed);
    assert_eq!(eager_states, states);
}
