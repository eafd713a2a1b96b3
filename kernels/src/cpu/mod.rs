//! The CPU backend: reference for every other backend, and a real backend
//! for CPU-only boxes.
pub mod dot;
