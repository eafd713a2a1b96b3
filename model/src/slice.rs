//! A model cut into contiguous layer ranges: [`LayerRange`], the tensors a
//! stage of a range needs, the metadata a pushed slice carries, and the model
//! digest by which coordinator and workers agree they mean the same file.
//!
//! ## The model digest
//!
//! `sha256:` + hex of SHA-256 over, for each shard of the model in order:
//!
//! 1. the tag `strata-model-digest-v1` and the shard's length in bytes;
//! 2. the shard's first `min(len, 32 MiB)` bytes: the GGUF header, all
//!    metadata and the tensor-info table of any real model (tokenizers are a
//!    few MiB), plus the first tensors' data;
//! 3. 16 blocks of 64 KiB spread evenly over the whole shard (the first at
//!    offset 0, the last ending at the end of the file).
//!
//! then the parsed tensor table (name, dims, type, shard, offset) so a table
//! past 32 MiB still counts. That reads at most ~33 MiB per shard, whatever
//! the model size. Two files with the same digest can differ only in data
//! bytes no sample touched (a fine-tune that rewrote some tensors in place
//! with the same shapes and the same header), which the coordinator cannot
//! tell apart without reading the whole file either.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::gguf::GgufWriter;
use crate::{GgufFile, TensorInfo};

const HEAD_BYTES: u64 = 32 << 20;
const SAMPLE_BLOCKS: u64 = 16;
const SAMPLE_BYTES: u64 = 64 << 10;

/// Layers `first..end` of a model (end exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LayerRange {
    pub first: usize,
    pub end: usize,
}

impl LayerRange {
    pub fn len(&self) -> usize {
        self.end - self.first
    }
    pub fn is_empty(&self) -> bool {
        self.end <= self.first
    }
}

impl std::fmt::Display for LayerRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..{}", self.first, self.end)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SliceError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("writing slice metadata: {0}")]
    Metadata(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SliceError + '_ {
    move |source| SliceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The digest of an open model (see the module docs).
pub fn model_digest(file: &GgufFile) -> Result<String, SliceError> {
    let mut h = Sha256::new();
    for path in file.shard_paths() {
        let mut f = File::open(path).map_err(io_err(path))?;
        let len = f.metadata().map_err(io_err(path))?.len();
        h.update(b"strata-model-digest-v1");
        h.update(len.to_le_bytes());
        let mut head = vec![0u8; len.min(HEAD_BYTES) as usize];
        f.read_exact(&mut head).map_err(io_err(path))?;
        h.update(&head);
        let block = SAMPLE_BYTES.min(len);
        let mut buf = vec![0u8; block as usize];
        for i in 0..SAMPLE_BLOCKS {
            let offset = (len - block) * i / (SAMPLE_BLOCKS - 1);
            f.seek(SeekFrom::Start(offset)).map_err(io_err(path))?;
            f.read_exact(&mut buf).map_err(io_err(path))?;
            h.update(&buf);
        }
    }
    for t in &file.tensors {
        h.update((t.name.len() as u64).to_le_bytes());
        h.update(t.name.as_bytes());
        for d in &t.dims {
            h.update(d.to_le_bytes());
        }
        h.update(t.dtype.id().to_le_bytes());
        h.update((t.shard as u64).to_le_bytes());
        h.update(t.offset.to_le_bytes());
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("sha256:{hex}"))
}

/// The tensors a stage running `range` of a model with `n_layers` layers
/// needs: its blocks, the embedding on the first stage, the final norm and
/// output head (or the tied embedding) on the last, and `rope_freqs` when the
/// model has one. With per-layer embeddings (Gemma 4 E-series) every stage
/// gets the embedding and the whole per-layer tables, and loads its share.
pub fn slice_tensors(file: &GgufFile, range: LayerRange, n_layers: usize) -> Vec<&TensorInfo> {
    let is_first = range.first == 0;
    let is_last = range.end == n_layers;
    let tied = file.tensor("output.weight").is_none();
    let per_layer = file.tensor("per_layer_token_embd.weight").is_some();
    file.tensors
        .iter()
        .filter(|t| match t.name.as_str() {
            "token_embd.weight" => is_first || (is_last && tied) || per_layer,
            "output_norm.weight" | "output.weight" => is_last,
            "rope_freqs.weight" => true,
            "per_layer_token_embd.weight"
            | "per_layer_model_proj.weight"
            | "per_layer_proj_norm.weight" => true,
            // Blocks past the trunk (Qwen3.5's MTP) go with the head.
            name => layer_of(name).is_some_and(|il| {
                (il >= range.first && il < range.end) || (is_last && il >= n_layers)
            }),
        })
        .collect()
}

/// `blk.N.…` → N.
fn layer_of(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("blk.")?;
    rest.split('.').next()?.parse().ok()
}

/// The model's metadata as a GGUF file with no tensors (split keys left
/// out): what a pushed slice's header carries.
pub fn metadata_gguf(file: &GgufFile) -> Result<Vec<u8>, SliceError> {
    let mut w = GgufWriter::new();
    for (k, v) in &file.metadata {
        if !k.starts_with("split.") {
            w.add_metadata(k.clone(), v.clone());
        }
    }
    w.to_bytes(|_, _, _| Ok(()))
        .map_err(|e| SliceError::Metadata(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_names() {
        assert_eq!(layer_of("blk.12.attn_q.weight"), Some(12));
        assert_eq!(layer_of("token_embd.weight"), None);
        assert_eq!(layer_of("blk.x.attn_q.weight"), None);
    }
}
