//! GGUF files: memory-mapped, validated before anything is trusted.
//!
//! `GgufFile::open` maps the file, parses the header, metadata and tensor
//! infos with bounds checks on every read, and checks that every tensor's
//! data lies inside the file and overlaps no other. Tensor data is then
//! borrowed straight from the map.

mod reader;
mod value;

pub use reader::{GgufError, GgufFile, TensorInfo};
pub use value::MetaValue;
