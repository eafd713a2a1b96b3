//! The slice hash: a full BLAKE3 hash of everything a stage loads (each of
//! its tensors' name, shape, type and data), by which a worker checks that
//! a file it is about to load, or a slice pushed to it, is exactly the slice
//! the coordinator computed from its model. Unlike the model digest it reads
//! every byte, so it is computed once per file and range and remembered by
//! the file's identity (path, length, modification time, inode).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::slice::{slice_tensors, LayerRange};
use crate::GgufFile;

/// `blake3:<64 hex digits>` over the tensors [`slice_tensors`] picks, in order.
pub fn slice_hash(file: &GgufFile, range: LayerRange, n_layers: usize) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"strata-slice-v1");
    for t in slice_tensors(file, range, n_layers) {
        h.update(&(t.name.len() as u64).to_le_bytes());
        h.update(t.name.as_bytes());
        h.update(&(t.dims.len() as u64).to_le_bytes());
        for d in &t.dims {
            h.update(&d.to_le_bytes());
        }
        h.update(&t.dtype.id().to_le_bytes());
        let data = file.tensor_data(t);
        h.update(&(data.len() as u64).to_le_bytes());
        h.update_rayon(data);
    }
    format!("blake3:{}", h.finalize().to_hex())
}

/// What identifies a file's contents without reading them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct FileIdentity {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn identity(file: &GgufFile) -> Option<Vec<FileIdentity>> {
    file.shard_paths()
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            #[cfg(unix)]
            let inode = std::os::unix::fs::MetadataExt::ino(&m);
            #[cfg(not(unix))]
            let inode = 0;
            Some(FileIdentity {
                path: std::fs::canonicalize(p).ok()?,
                len: m.len(),
                modified: m.modified().ok(),
                inode,
            })
        })
        .collect()
}

/// Slice hashes already computed, by file identity and range.
#[derive(Default, Debug)]
pub struct SliceHashes {
    known: Mutex<HashMap<(Vec<FileIdentity>, LayerRange), String>>,
}

impl SliceHashes {
    /// The slice hash of `range` of `file`, computed on first use.
    pub fn get(&self, file: &GgufFile, range: LayerRange, n_layers: usize) -> String {
        let key = identity(file).map(|id| (id, range));
        if let Some(k) = &key {
            if let Some(h) = self.lock().get(k) {
                return h.clone();
            }
        }
        let hash = slice_hash(file, range, n_layers);
        if let Some(k) = key {
            self.lock().insert(k, hash.clone());
        }
        hash
    }

    /// Forgets everything known about the files at `path` (it was replaced
    /// or removed).
    pub fn forget(&self, path: &std::path::Path) {
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        self.lock()
            .retain(|(ids, _), _| !ids.iter().any(|id| id.path == canonical));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Vec<FileIdentity>, LayerRange), String>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }
}
