//! What a worker keeps on disk: the `--model-dir` scan (by model digest, see
//! [`strata_model::slice`]) and the cache of slices pushed by the coordinator.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use strata_model::arch::HyperParams;
use strata_model::gguf::{GgufWriter, TensorSpec};
use strata_model::profile::{KvType, MemoryProfile};
use strata_model::{GgmlType, GgufFile, MetaValue};

pub use strata_model::slice::{metadata_gguf, model_digest, slice_tensors, LayerRange};

/// Metadata keys a cached slice carries about where it came from.
pub const KEY_SLICE_DIGEST: &str = "strata.slice.model_digest";
pub const KEY_SLICE_FIRST: &str = "strata.slice.first_layer";
pub const KEY_SLICE_END: &str = "strata.slice.end_layer";

#[derive(Debug, thiserror::Error)]
pub enum SliceCacheError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Model(String),
    #[error("pushed slice: {0}")]
    Push(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SliceCacheError + '_ {
    move |source| SliceCacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Memory a slice needs on a worker: weights (as stored) and KV for
/// `ctx_tokens` tokens, rounded up to whole KV blocks as the stage allocates.
pub fn slice_memory_bytes(
    file: &GgufFile,
    hp: &HyperParams,
    range: LayerRange,
    ctx_tokens: usize,
) -> (u64, u64) {
    let weights = slice_tensors(file, range, hp.n_layers)
        .iter()
        .map(|t| t.size_bytes)
        .sum();
    let profile = MemoryProfile::from_gguf(file, hp);
    let tokens = ctx_tokens.div_ceil(strata_kernels::KV_BLOCK_TOKENS).max(1)
        * strata_kernels::KV_BLOCK_TOKENS;
    let kv = profile
        .layers
        .get(range.first..range.end)
        .unwrap_or(&[])
        .iter()
        .map(|l| l.kv_bytes_per_token(KvType::F16) * tokens as u64)
        .sum();
    (weights, kv)
}

/// A `--model-dir`: the GGUF files in it (not recursive; split models by
/// their first shard), by digest.
#[derive(Debug, Default, Clone)]
pub struct ModelDir {
    pub models: Vec<(String, PathBuf)>,
}

impl ModelDir {
    /// Opens and digests every `*.gguf` in `dir`; files that fail to open
    /// are logged and skipped.
    pub fn scan(dir: &Path) -> Result<Self, SliceCacheError> {
        let mut models = Vec::new();
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
            .collect();
        paths.sort();
        for path in paths {
            if strata_model::gguf::parse_shard_path(&path).is_some_and(|(_, no, _)| no != 0) {
                continue;
            }
            match GgufFile::open(&path)
                .map_err(|e| SliceCacheError::Model(e.to_string()))
                .and_then(|f| model_digest(&f).map_err(|e| SliceCacheError::Model(e.to_string())))
            {
                Ok(d) => {
                    tracing::info!("model dir: {} is {d}", path.display());
                    models.push((d, path));
                }
                Err(e) => tracing::warn!("model dir: skipping {}: {e}", path.display()),
            }
        }
        Ok(ModelDir { models })
    }

    /// Adds single files (the embedded worker's model), digested now.
    pub fn add_files(&mut self, files: &[PathBuf]) -> Result<(), SliceCacheError> {
        for path in files {
            let file = GgufFile::open(path).map_err(|e| SliceCacheError::Model(e.to_string()))?;
            let d = model_digest(&file).map_err(|e| SliceCacheError::Model(e.to_string()))?;
            self.models.push((d, path.clone()));
        }
        Ok(())
    }

    /// The known file `path` names (compared after resolving links), if it
    /// is one: a LoadSlice may name only these.
    pub fn known(&self, path: &Path) -> Option<&Path> {
        let want = path.canonicalize().ok()?;
        self.models
            .iter()
            .map(|(_, p)| p.as_path())
            .find(|p| p.canonicalize().is_ok_and(|c| c == want))
    }

    pub fn find(&self, digest: &str) -> Option<&Path> {
        self.models
            .iter()
            .find(|(d, _)| d == digest)
            .map(|(_, p)| p.as_path())
    }

    pub fn digests(&self) -> Vec<String> {
        self.models.iter().map(|(d, _)| d.clone()).collect()
    }
}

/// A slice pushed by the coordinator, before its data arrives.
#[derive(Debug, Clone)]
pub struct PushedSlice {
    pub digest: String,
    pub range: LayerRange,
    pub metadata: BTreeMap<String, MetaValue>,
    /// name, dims (ggml order), type, in the order their data arrives.
    pub tensors: Vec<(String, Vec<u64>, GgmlType)>,
}

/// Slices pushed to this worker, one GGUF per (digest, layer range):
/// `DIR/<first 32 hex digits of the digest>-layers-<first>-<end>.gguf`.
#[derive(Debug, Clone)]
pub struct SliceCache {
    dir: PathBuf,
}

impl SliceCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SliceCache { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path_for(&self, digest: &str, range: LayerRange) -> PathBuf {
        let hex: String = digest
            .trim_start_matches("sha256:")
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(32)
            .collect();
        self.dir
            .join(format!("{hex}-layers-{}-{}.gguf", range.first, range.end))
    }

    /// The cached slice for `digest` and `range`, if one was pushed before
    /// and its metadata says it is that slice.
    pub fn find(&self, digest: &str, range: LayerRange) -> Option<PathBuf> {
        let path = self.path_for(digest, range);
        let file = GgufFile::open(&path).ok()?;
        let ok = file.get_str(KEY_SLICE_DIGEST) == Some(digest)
            && file.get_u64(KEY_SLICE_FIRST) == Some(range.first as u64)
            && file.get_u64(KEY_SLICE_END) == Some(range.end as u64);
        ok.then_some(path)
    }

    /// Writes a pushed slice: `next_chunk` yields `(tensor index, bytes)` in
    /// tensor order (blocking; `None` ends the stream). The file appears
    /// under its final name only once complete.
    pub fn write(
        &self,
        slice: &PushedSlice,
        mut next_chunk: impl FnMut() -> Option<(usize, Vec<u8>)>,
    ) -> Result<(PathBuf, u64), SliceCacheError> {
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let mut w = GgufWriter::new();
        for (k, v) in &slice.metadata {
            if !k.starts_with("split.") && !k.starts_with("strata.slice.") {
                w.add_metadata(k.clone(), v.clone());
            }
        }
        w.add_metadata(KEY_SLICE_DIGEST, MetaValue::String(slice.digest.clone()));
        w.add_metadata(KEY_SLICE_FIRST, MetaValue::U64(slice.range.first as u64));
        w.add_metadata(KEY_SLICE_END, MetaValue::U64(slice.range.end as u64));
        for (name, dims, dtype) in &slice.tensors {
            w.add_tensor(name.clone(), dims, *dtype)
                .map_err(|e| SliceCacheError::Push(e.to_string()))?;
        }
        let path = self.path_for(&slice.digest, slice.range);
        let partial = path.with_extension("gguf.partial");
        let mut pending: Option<(usize, Vec<u8>)> = None;
        let mut total = 0u64;
        let fill = |i: usize, spec: &TensorSpec, out: &mut dyn io::Write| -> io::Result<()> {
            let mut written = 0u64;
            while written < spec.size_bytes {
                let (idx, data) = match pending.take() {
                    Some(c) => c,
                    None => next_chunk().ok_or_else(|| {
                        io::Error::other(format!(
                            "stream ended inside tensor {} ({written} of {} bytes)",
                            spec.name, spec.size_bytes
                        ))
                    })?,
                };
                if idx != i {
                    return Err(io::Error::other(format!(
                        "chunk for tensor #{idx} while tensor #{i} ({}) has {written} of {} bytes",
                        spec.name, spec.size_bytes
                    )));
                }
                if written + data.len() as u64 > spec.size_bytes {
                    return Err(io::Error::other(format!(
                        "tensor {} gets more than its {} bytes",
                        spec.name, spec.size_bytes
                    )));
                }
                out.write_all(&data)?;
                written += data.len() as u64;
            }
            total += written;
            Ok(())
        };
        let result = w.write(&partial, fill);
        if let Err(e) = result {
            let _ = std::fs::remove_file(&partial);
            return Err(SliceCacheError::Push(e.to_string()));
        }
        if let Some((idx, _)) = next_chunk() {
            let _ = std::fs::remove_file(&partial);
            return Err(SliceCacheError::Push(format!(
                "data for tensor #{idx} after the last tensor"
            )));
        }
        std::fs::rename(&partial, &path).map_err(io_err(&path))?;
        Ok((path, total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_model(path: &Path, name: &str, fill: u8) {
        let mut w = GgufWriter::new();
        w.add_metadata("general.name", MetaValue::String(name.into()));
        w.add_tensor("blk.0.attn_q.weight", &[64, 4], GgmlType::F32)
            .unwrap();
        w.write(path, |_, spec, out| {
            out.write_all(&vec![fill; spec.size_bytes as usize])
        })
        .unwrap();
    }

    #[test]
    fn digest_follows_metadata_and_sampled_data() {
        let dir = tempfile::tempdir().unwrap();
        let digest = |name: &str, fill: u8| {
            let p = dir.path().join(format!("{name}-{fill}.gguf"));
            write_model(&p, name, fill);
            model_digest(&GgufFile::open(&p).unwrap()).unwrap()
        };
        let a = digest("a", 1);
        assert!(a.starts_with("sha256:") && a.len() == 7 + 64);
        assert_eq!(a, digest("a", 1));
        assert_ne!(a, digest("b", 1), "metadata counts");
        assert_ne!(a, digest("a", 2), "data counts");
    }

    #[test]
    fn pushed_slice_round_trips_through_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SliceCache::new(dir.path());
        let range = LayerRange { first: 0, end: 1 };
        let slice = PushedSlice {
            digest: "sha256:abcd".into(),
            range,
            metadata: BTreeMap::from([("general.name".to_string(), MetaValue::String("x".into()))]),
            tensors: vec![("blk.0.attn_q.weight".into(), vec![64, 4], GgmlType::F32)],
        };
        let mut chunks = vec![(0usize, vec![7u8; 512]), (0, vec![8u8; 512])].into_iter();
        let (path, bytes) = cache.write(&slice, || chunks.next()).unwrap();
        assert_eq!(bytes, 1024);
        assert_eq!(cache.find("sha256:abcd", range), Some(path.clone()));
        assert_eq!(cache.find("sha256:abce", range), None);
        let f = GgufFile::open(&path).unwrap();
        let t = f.tensor("blk.0.attn_q.weight").unwrap();
        assert_eq!(&f.tensor_data(t)[510..514], &[7, 7, 8, 8]);

        // A short stream leaves no file behind.
        let other = LayerRange { first: 0, end: 2 };
        let mut short = vec![(0usize, vec![7u8; 512])].into_iter();
        assert!(cache
            .write(
                &PushedSlice {
                    range: other,
                    ..slice
                },
                || short.next()
            )
            .is_err());
        assert_eq!(cache.find("sha256:abcd", other), None);
        assert!(!cache
            .path_for("sha256:abcd", other)
            .with_extension("gguf.partial")
            .exists());
    }

    #[test]
    fn cache_paths_are_per_digest_and_range() {
        let c = SliceCache::new("/tmp/x");
        let a = c.path_for("sha256:00ff", LayerRange { first: 0, end: 7 });
        assert!(a.ends_with("00ff-layers-0-7.gguf"));
        assert_ne!(
            a,
            c.path_for("sha256:00ff", LayerRange { first: 7, end: 20 })
        );
    }
}
