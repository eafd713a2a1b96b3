//! The CUDA emulator's tensor-core instruction (`mma_s8_m16n8k16` in
//! common.cuh, a warp collective in emu/runtime.cpp): one
//! `mma.sync.m16n8k16.row.col.s32.s8.s8.s32` on distinct values, with the
//! fragments packed and unpacked here from the PTX ISA's layout, against a
//! plain product; and the misuses it must turn into launch failures.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaModule, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use strata_kernels::cuda::{emulator, KernelSource};

const PROBES: KernelSource = KernelSource::new(
    "emulator_mma_probes",
    r#"
// One mma per warp on the fragments in `frags` (7 words a lane: a0, a1, b,
// c0..c3); each lane writes its D (4 words). Lanes at or past `lanes` leave
// before it.
extern "C" __global__ void mma_once(const i32* frags, i32* d, int lanes) {
    const int lane = threadIdx.x;
    if (lane >= lanes) return;
    const i32* f = frags + 7 * (lane % 32);
    const i32 a[2] = {f[0], f[1]};
    const i32 c[4] = {f[3], f[4], f[5], f[6]};
    i32 out[4];
    mma_s8_m16n8k16(out, a, f[2], c);
    for (int i = 0; i < 4; i++) d[4 * lane + i] = out[i];
}
"#,
    &["mma_once"],
);

fn probes() -> (Arc<CudaContext>, Arc<CudaModule>) {
    emulator::install().expect("the CUDA emulator");
    let ctx = CudaContext::new(0).expect("emulated device");
    let lib = emulator::build_module(&PROBES).expect("probe kernels build");
    let module = ctx.load_module(Ptx::from_file(lib)).expect("probe module");
    (ctx, module)
}

// The PTX ISA's fragments for m16n8k16 with .s8 A/B and .s32 C/D
// ("Matrix Fragments for mma.m16n8k16 with integer type"): element i of
// lane l's fragment, as (row, col). groupID = l / 4, threadID_in_group = l % 4.
fn a_pos(lane: usize, i: usize) -> (usize, usize) {
    (lane / 4 + 8 * (i / 4), (lane % 4) * 4 + i % 4)
}
fn b_pos(lane: usize, i: usize) -> (usize, usize) {
    ((lane % 4) * 4 + i, lane / 4)
}
fn c_pos(lane: usize, i: usize) -> (usize, usize) {
    (lane / 4 + 8 * (i / 2), (lane % 4) * 2 + i % 2)
}

/// Runs `mma_once` with `threads` threads (lanes at or past `lanes` leave
/// first) on the fragments of a, b, c.
fn run(
    a: &[[i8; 16]; 16],
    b: &[[i8; 8]; 16],
    c: &[[i32; 8]; 16],
    threads: u32,
    lanes: i32,
) -> Result<Vec<i32>, String> {
    let (ctx, m) = probes();
    let s = ctx.default_stream();
    let mut frags = vec![0i32; 7 * 32];
    for lane in 0..32 {
        let f = &mut frags[7 * lane..7 * lane + 7];
        for i in 0..8 {
            let (r, k) = a_pos(lane, i);
            f[i / 4] |= ((a[r][k] as u8 as u32) << (8 * (i % 4))) as i32;
        }
        for i in 0..4 {
            let (k, n) = b_pos(lane, i);
            f[2] |= ((b[k][n] as u8 as u32) << (8 * i)) as i32;
            let (r, n) = c_pos(lane, i);
            f[3 + i] = c[r][n];
        }
    }
    let frags = s.clone_htod(&frags).unwrap();
    let mut d = s.alloc_zeros::<i32>(4 * threads as usize).unwrap();
    let f = m.load_function("mma_once").unwrap();
    let mut l = s.launch_builder(&f);
    l.arg(&frags).arg(&mut d).arg(&lanes);
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: 7 words in and 4 out per lane.
    unsafe { l.launch(cfg) }.map_err(|e| format!("{e:?}"))?;
    Ok(s.clone_dtoh(&d).unwrap())
}

#[test]
fn the_layout_functions_are_the_isas() {
    // Spot checks against the ISA's figures: lane 5 is group 1, thread 1.
    assert_eq!(a_pos(5, 0), (1, 4));
    assert_eq!(a_pos(5, 6), (9, 6));
    assert_eq!(a_pos(31, 7), (15, 15));
    assert_eq!(b_pos(5, 2), (6, 1));
    assert_eq!(b_pos(31, 3), (15, 7));
    assert_eq!(c_pos(5, 1), (1, 3));
    assert_eq!(c_pos(5, 3), (9, 3));
}

#[test]
fn one_mma_on_distinct_values_is_the_product() {
    let seed: u64 = rand::rng().random();
    println!("seed {seed}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Every A and B element distinct (a shuffle of all int8 values), so an
    // element taken from the wrong place changes D.
    let mut levels: Vec<i8> = (-128..=127).collect();
    levels.shuffle(&mut rng);
    let mut a = [[0i8; 16]; 16];
    let mut b = [[0i8; 8]; 16];
    let mut c = [[0i32; 8]; 16];
    for r in 0..16 {
        for k in 0..16 {
            a[r][k] = levels[16 * r + k];
        }
    }
    levels.shuffle(&mut rng);
    for k in 0..16 {
        for n in 0..8 {
            b[k][n] = levels[8 * k + n];
            c[k][n] = rng.random_range(-1_000_000..1_000_000);
        }
    }
    let d = run(&a, &b, &c, 32, 32).expect("mma launch");
    for lane in 0..32 {
        for i in 0..4 {
            let (r, n) = c_pos(lane, i);
            let want: i32 = c[r][n]
                + (0..16)
                    .map(|k| a[r][k] as i32 * b[k][n] as i32)
                    .sum::<i32>();
            assert_eq!(d[4 * lane + i], want, "D[{r}][{n}] (lane {lane}, d{i})");
        }
    }
}

#[test]
fn an_mma_a_lane_never_reaches_fails_the_launch() {
    let zero = ([[0i8; 16]; 16], [[0i8; 8]; 16], [[0i32; 8]; 16]);
    let err = run(&zero.0, &zero.1, &zero.2, 32, 31).expect_err("lane 31 left");
    assert!(
        err.contains("exited") && err.contains("thread (31,0,0)"),
        "{err}"
    );
}

#[test]
fn an_mma_in_a_partial_warp_fails_the_launch() {
    let zero = ([[0i8; 16]; 16], [[0i8; 8]; 16], [[0i32; 8]; 16]);
    let err = run(&zero.0, &zero.1, &zero.2, 48, 48).expect_err("warp of 16");
    assert!(err.contains("mma.sync in a warp of 16 threads"), "{err}");
}
