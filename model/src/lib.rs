//! strata-model: everything about a model that is not compute.
//!
//! - [`gguf`]: memory-mapped, validated GGUF reading; a writer for tests and
//!   synthetic models.
//! - [`quant`]: block layouts of the GGML quant types, dequantization and
//!   scalar reference dot products.
//! - [`arch`]: hyper-parameters of the supported architectures, from metadata.
//! - [`attention_order`]: which of ggml's attention orders each row takes.
//! - [`profile`]: per-layer memory profile, what the planner stands on.
//! - [`tokenizer`], [`chat`]: text in and out.
//! - [`units`]: byte sizes as flags take them and tables print them.

pub mod arch;
pub mod attention_order;
pub mod chat;
pub mod constraint;
pub mod gguf;
pub mod profile;
pub mod quant;
pub mod slice;
pub mod slice_hash;
pub mod synth;
pub mod tokenizer;
pub mod tool_calls;
pub mod units;

pub use gguf::{GgufFile, MetaValue, TensorInfo};
pub use quant::GgmlType;
pub use slice::LayerRange;
