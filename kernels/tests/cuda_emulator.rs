//! The CUDA emulator itself (`cuda::emulator`): its execution model, and the
//! kernel mistakes it must turn into failures (a missing `__syncthreads`, a
//! barrier not every thread reaches, a read past the end of a buffer, a
//! read of memory nothing wrote). The op tests (cuda_ops.rs) trust it.

use std::process::Command;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaModule, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use strata_kernels::cuda::{emulator, KernelSource};

const PROBES: KernelSource = KernelSource::new(
    "emulator_probes",
    r#"
// Lane sums by xor and down shuffles, and a broadcast from lane 5, run by
// warp 1 only (a shuffle is a barrier among one warp's lanes, not the block).
extern "C" __global__ void shuffles(int* out) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (warp != 1) return;
    float x = lane;
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(FULL_MASK, x, o);
    float y = lane;
    for (int o = 16; o > 0; o >>= 1) y += __shfl_down_sync(FULL_MASK, y, o);
    out[lane] = (int)x;
    out[32 + lane] = lane == 0 ? (int)y : -1;
    out[64 + lane] = __shfl_sync(FULL_MASK, lane * 10, 5);
}

// Each thread reads its neighbour's shared value: right only with the barrier.
extern "C" __global__ void neighbours(int* out, int barrier) {
    __shared__ int s[256];
    s[threadIdx.x] = threadIdx.x + 1000 * blockIdx.x;
    if (barrier) __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}

// Threads past `n` leave before the barrier the others wait at.
extern "C" __global__ void early_exit(int* out, int n) {
    if ((int)threadIdx.x >= n) return;
    __syncthreads();
    out[threadIdx.x] = 1;
}

// Reads one value past the end of `x` (n values).
extern "C" __global__ void read_past_end(const float* x, float* out, int n) {
    out[threadIdx.x] = x[threadIdx.x + n];
}

extern "C" __global__ void copy(const float* x, float* out) {
    out[threadIdx.x] = x[threadIdx.x];
}
"#,
    &[
        "shuffles",
        "neighbours",
        "early_exit",
        "read_past_end",
        "copy",
    ],
);

fn probes() -> (Arc<CudaContext>, Arc<CudaModule>) {
    emulator::install().expect("the CUDA emulator");
    let ctx = CudaContext::new(0).expect("emulated device");
    let lib = emulator::build_module(&PROBES).expect("probe kernels build");
    let module = ctx.load_module(Ptx::from_file(lib)).expect("probe module");
    (ctx, module)
}

fn threads(n: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (n, 1, 1),
        shared_mem_bytes: 0,
    }
}

#[test]
fn warp_shuffles_exchange_within_one_warp() {
    let (ctx, m) = probes();
    let s = ctx.default_stream();
    let mut out = s.alloc_zeros::<i32>(96).unwrap();
    let f = m.load_function("shuffles").unwrap();
    let mut b = s.launch_builder(&f);
    b.arg(&mut out);
    // SAFETY: 96 ints written by lanes of warp 1.
    unsafe { b.launch(threads(128)) }.unwrap();
    let got = s.clone_dtoh(&out).unwrap();
    let sum: i32 = (0..32).sum();
    assert!(got[..32].iter().all(|&v| v == sum), "xor sums {got:?}");
    assert_eq!(got[32], sum, "down-shuffle sum in lane 0");
    assert!(got[64..].iter().all(|&v| v == 50), "broadcast {got:?}");
}

#[test]
fn a_missing_syncthreads_gives_wrong_values() {
    let (ctx, m) = probes();
    let s = ctx.default_stream();
    let f = m.load_function("neighbours").unwrap();
    let run = |barrier: i32| {
        let mut out = s.alloc_zeros::<i32>(2 * 256).unwrap();
        let mut b = s.launch_builder(&f);
        b.arg(&mut out).arg(&barrier);
        let cfg = LaunchConfig {
            grid_dim: (2, 1, 1),
            ..threads(256)
        };
        // SAFETY: one int per thread.
        unsafe { b.launch(cfg) }.unwrap();
        s.clone_dtoh(&out).unwrap()
    };
    let want: Vec<i32> = (0..2)
        .flat_map(|blk| (0..256).map(move |t| (t + 1) % 256 + 1000 * blk))
        .collect();
    assert_eq!(run(1), want, "with the barrier");
    // Threads run to their next barrier in a shuffled order, and the
    // neighbours form a cycle: some thread always reads before its
    // neighbour wrote.
    assert_ne!(run(0), want, "without the barrier");
}

#[test]
fn a_barrier_not_every_thread_reaches_fails_the_launch() {
    let (ctx, m) = probes();
    let s = ctx.default_stream();
    let f = m.load_function("early_exit").unwrap();
    let mut out = s.alloc_zeros::<i32>(64).unwrap();
    let n = 40i32;
    let mut b = s.launch_builder(&f);
    b.arg(&mut out).arg(&n);
    // SAFETY: threads below n write one int each.
    let err = unsafe { b.launch(threads(64)) }.expect_err("divergent barrier");
    let msg = format!("{err:?}");
    assert!(msg.contains("__syncthreads not reached"), "{msg}");
}

#[test]
fn unwritten_device_memory_reads_as_nan() {
    let (ctx, m) = probes();
    let s = ctx.default_stream();
    let f = m.load_function("copy").unwrap();
    // SAFETY: read back only after the kernel wrote every value.
    let x = unsafe { s.alloc::<f32>(32) }.unwrap();
    let mut out = s.alloc_zeros::<f32>(32).unwrap();
    let mut b = s.launch_builder(&f);
    b.arg(&x).arg(&mut out);
    // SAFETY: 32 floats in and out.
    unsafe { b.launch(threads(32)) }.unwrap();
    assert!(s.clone_dtoh(&out).unwrap().iter().all(|v| v.is_nan()));
}

/// The test runs itself in a child process (the fault ends that process),
/// which does the read.
#[test]
fn a_read_past_the_end_faults_naming_the_kernel() {
    if std::env::var_os("STRATA_EMU_FAULT_CHILD").is_some() {
        let (ctx, m) = probes();
        let s = ctx.default_stream();
        let f = m.load_function("read_past_end").unwrap();
        let x = s.clone_htod(&[1.0f32; 64]).unwrap();
        let mut out = s.alloc_zeros::<f32>(64).unwrap();
        let n = 64i32;
        let mut b = s.launch_builder(&f);
        b.arg(&x).arg(&mut out).arg(&n);
        // SAFETY: not safe, on purpose: the emulator must catch the read.
        let _ = unsafe { b.launch(threads(64)) };
        s.synchronize().unwrap();
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_read_past_the_end_faults_naming_the_kernel",
            "--nocapture",
        ])
        .env("STRATA_EMU_FAULT_CHILD", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the read went unnoticed: {stderr}");
    // The emulator's own fault report, or AddressSanitizer's when the
    // kernels are built with it (scripts/test.sh runs both).
    assert!(
        stderr.contains("read_past_end")
            && (stderr.contains("invalid memory access")
                || stderr.contains("heap-buffer-overflow")),
        "{stderr}"
    );
}
