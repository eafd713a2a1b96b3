//! strata-kernels: the ops a transformer block needs, behind a backend.
pub mod cpu;
