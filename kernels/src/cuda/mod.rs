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
