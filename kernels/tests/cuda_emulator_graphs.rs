//! The CUDA emulator's stream capture and graphs (emu/graph.h): a captured
//! launch runs nothing until the graph is launched, then replays with the
//! argument values of the capture over the buffers' contents of the
//! moment; and what a GPU refuses under capture fails here too, so the
//! CUDA backend's graph path (cuda_graphs.rs) is held to the GPU's rules.

use std::sync::Arc;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaContext, CudaModule, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use strata_kernels::cuda::{emulator, KernelSource};

const PROBES: KernelSource = KernelSource::new(
    "graph_probes",
    r#"
extern "C" __global__ void scale(const float* x, float* out, float k) {
    out[threadIdx.x] = k * x[threadIdx.x];
}
"#,
    &["scale"],
);

fn setup() -> (Arc<CudaStream>, Arc<CudaModule>) {
    emulator::install().expect("the CUDA emulator");
    let ctx = CudaContext::new(0).expect("emulated device");
    let lib = emulator::build_module(&PROBES).expect("probe kernels build");
    let module = ctx.load_module(Ptx::from_file(lib)).expect("probe module");
    // SAFETY: one stream, nothing allocated yet.
    unsafe { ctx.disable_event_tracking() };
    (ctx.new_stream().expect("a stream"), module)
}

const THREADS: LaunchConfig = LaunchConfig {
    grid_dim: (1, 1, 1),
    block_dim: (32, 1, 1),
    shared_mem_bytes: 0,
};

fn begin(s: &CudaStream) {
    s.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .expect("capture begins");
}

fn end(s: &Arc<CudaStream>) -> cudarc::driver::CudaGraph {
    s.end_capture(CUgraphInstantiate_flags(0))
        .expect("capture ends")
        .expect("a graph")
}

/// The legacy default stream cannot be captured, as on a GPU (where the
/// backend once captured on it, and every graph failed).
#[test]
fn the_legacy_default_stream_refuses_capture() {
    let (s, _) = setup();
    let legacy = s.context().default_stream();
    let err = legacy
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .expect_err("capture on the null stream");
    assert!(
        format!("{err:?}").contains("CAPTURE_UNSUPPORTED"),
        "{err:?}"
    );
}

#[test]
fn a_graph_replays_captured_arguments_over_current_buffer_contents() {
    let (s, m) = setup();
    let f = m.load_function("scale").unwrap();
    let mut x = s.clone_htod(&[1.0f32; 32]).unwrap();
    let mut out = s.alloc_zeros::<f32>(32).unwrap();
    let mut k = 2.0f32;
    begin(&s);
    {
        let mut b = s.launch_builder(&f);
        b.arg(&x).arg(&mut out).arg(&k);
        // SAFETY: 32 floats in and out.
        unsafe { b.launch(THREADS) }.expect("captured launch");
    }
    let graph = end(&s);
    k = 100.0; // the graph keeps the value it captured
    assert!(k > 0.0);
    assert_eq!(
        s.clone_dtoh(&out).unwrap(),
        vec![0.0; 32],
        "capture ran nothing"
    );
    let xs: Vec<f32> = (0..32).map(|i| i as f32).collect();
    s.memcpy_htod(&xs, &mut x).unwrap();
    graph.launch().expect("graph launch");
    let want: Vec<f32> = xs.iter().map(|v| 2.0 * v).collect();
    assert_eq!(s.clone_dtoh(&out).unwrap(), want);
    s.memcpy_htod(&[3.0f32; 32], &mut x).unwrap();
    graph.launch().expect("second launch");
    assert_eq!(s.clone_dtoh(&out).unwrap(), vec![6.0; 32]);
}

#[test]
fn a_copy_from_the_host_under_capture_fails_and_invalidates_it() {
    let (s, _) = setup();
    begin(&s);
    let err = s
        .clone_htod(&[1.0f32; 8])
        .expect_err("host copy under capture");
    assert!(format!("{err:?}").contains("CAPTURE"), "{err:?}");
    // cudarc defers an error met in a drop (here the host copy's stream
    // sync, refused under capture too) to its next call: take it first.
    let _ = s.context().check_err();
    let end = s.end_capture(CUgraphInstantiate_flags(0)).map(|_| ());
    assert!(
        format!("{end:?}").contains("CAPTURE_INVALIDATED"),
        "the capture is invalidated: {end:?}"
    );
    // The stream works again after it.
    assert_eq!(s.clone_dtoh(&s.clone_htod(&[7u32]).unwrap()).unwrap(), [7]);
}

#[test]
fn a_graph_allocation_must_be_freed_before_the_next_launch() {
    let (s, m) = setup();
    let f = m.load_function("scale").unwrap();
    let x = s.clone_htod(&[1.5f32; 32]).unwrap();
    begin(&s);
    // SAFETY: written in full by the kernel before any read.
    let mut tmp = unsafe { s.alloc::<f32>(32) }.unwrap();
    {
        let mut b = s.launch_builder(&f);
        b.arg(&x).arg(&mut tmp).arg(&2.0f32);
        // SAFETY: 32 floats in and out.
        unsafe { b.launch(THREADS) }.expect("captured launch");
    }
    let ptr = tmp.leak(); // not freed in the graph: the launch hands it out
    let graph = end(&s);
    graph.launch().expect("first launch");
    // SAFETY: the graph's allocation of 32 floats, live after the launch.
    let out = unsafe { s.upgrade_device_ptr::<f32>(ptr, 32) };
    assert_eq!(s.clone_dtoh(&out).unwrap(), vec![3.0; 32]);
    let err = graph
        .launch()
        .expect_err("relaunch with the allocation held");
    assert!(format!("{err:?}").contains("not freed"), "{err:?}");
    drop(out); // frees it
    graph.launch().expect("launch after the free");
}
