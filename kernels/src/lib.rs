//! strata-kernels: the ops a transformer block needs, behind a [`Backend`].
//!
//! The CPU backend is always built: it is the reference every other backend
//! is tested against, and a real backend for CPU-only boxes. The CUDA
//! backend loads the driver and NVRTC at run time, so it builds anywhere.

pub mod backend;
pub mod cpu;
pub mod cuda;
pub mod kv;
pub mod moe_route;
mod op_checks;
pub mod recurrent;

pub use backend::{
    attn_temperature_scales, AttentionBatch, Backend, BatchIndex, KernelError, RopeConfig, Unary,
    WeightShape, Yarn,
};
pub use cpu::CpuBackend;
pub use kv::{KvBlockId, KvGeometry, KV_BLOCK_TOKENS};
pub use moe_route::{route, Gating, HostRouting, Router};
pub use recurrent::{DeltaNetShape, RecurrentBatch};
