//! The CUDA backend: cudarc over a driver and NVRTC loaded at run time.
//! Kernels are CUDA C in `kernels/cuda/`, compiled at worker start for the
//! device's compute capability and cached on disk ([`compile`]).

mod backend;
pub mod compile;
pub mod emulator;
mod profile;
mod sealed;
pub mod source;
mod staged_upload;
mod uploads;

pub use backend::{
    CudaAct, CudaBackend, CudaKvCache, CudaLayerRuns, CudaRouting, CudaWeight, MAX_BATCH,
    MAX_DELTA_NET_HEAD_DIM,
};
pub use compile::{cached_cubin, compile_cubin, nvrtc_present, CompileError};
pub use source::{
    kernel_names, KernelSource, FLOAT_KERNEL_TYPES, QUANT_KERNEL_TYPES, SOURCES, SUPPORTED_ARCHS,
};

/// Whether a CUDA driver can be loaded (any CUDA call without one panics).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen libcuda by its known names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// How many CUDA devices the driver shows (0 without a driver); makes no
/// context.
pub fn device_count() -> Result<usize, String> {
    if !driver_present() {
        return Ok(0);
    }
    let n = cudarc::driver::CudaContext::device_count()
        .map_err(|e| format!("counting CUDA devices: {e}"))?;
    Ok(n.max(0) as usize)
}

/// Each CUDA device the driver shows, with its (free, total) memory in
/// bytes; none without a driver. A device whose context cannot be made is
/// an error naming it.
pub fn devices() -> Result<Vec<(u64, u64)>, String> {
    use cudarc::driver::CudaContext;
    (0..device_count()?)
        .map(|i| {
            let ctx = CudaContext::new(i).map_err(|e| format!("CUDA device {i}: {e}"))?;
            let (free, total) = ctx
                .mem_get_info()
                .map_err(|e| format!("CUDA device {i}: reading its memory: {e}"))?;
            Ok((free as u64, total as u64))
        })
        .collect()
}
