//! strata-worker: a [`Stage`] runs a contiguous layer range of a model on one
//! backend, owns those layers' weights, KV cache and recurrent state, and (on the last stage)
//! turns hidden states into logits and samples.

pub mod blocks;
pub mod generate;
pub mod kv_blocks;
pub mod kv_disk;
pub mod sampler;
pub mod service;
pub mod slice_cache;
pub mod stage;
pub mod state_slots;
pub mod state_snapshots;
mod weights;
pub mod window_rings;

pub use kv_blocks::BlockAllocator;
pub use sampler::{Sampler, SamplingParams, TokenLogprob};
pub use stage::{BatchSeq, LayerRange, LogitRows, Stage, StageError, StageInput, StageOutput};
