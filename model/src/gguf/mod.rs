//! GGUF files: memory-mapped, validated before anything is trusted.
//!
//! `GgufFile::open` maps the file, parses the header, metadata and tensor
//! infos with bounds checks on every read, and checks that every tensor's
//! data lies inside the file and overlaps no other. Tensor data is then
//! borrowed straight from the map. A shard of a split model opens all its
//! shards. `GgufWriter` writes GGUF v3, streaming tensor data per tensor.

mod reader;
mod split;
mod value;
mod writer;

pub use reader::{
    GgufError, GgufFile, TensorInfo, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ARRAY_ELEMS, MAX_DIMS,
    MAX_STRING_BYTES,
};
pub use split::{
    parse_shard_path, shard_path, SplitInfo, KEY_SPLIT_COUNT, KEY_SPLIT_NO, KEY_SPLIT_TENSORS_COUNT,
};
pub use value::MetaValue;
pub use writer::{GgufWriteError, GgufWriter, SplitLimits, TensorSpec, WRITE_VERSION};
