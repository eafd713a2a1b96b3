//! What a worker keeps on disk: the `--model-dir` scan (by model digest, see
//! [`strata_model::slice`]) and the cache of slices pushed by the coordinator.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use strata_model::arch::ModelSpec;
use strata_model::gguf::{GgufWriter, TensorSpec};
use strata_model::profile::{KvType, MemoryProfile, StageLoad, StageMemory, KV_BLOCK_TOKENS};
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

/// What a stage of `range` allocates when loaded for `load`: the model
/// crate's [`MemoryProfile::stage_memory`], the same numbers the planner
/// placed the slice by.
pub fn slice_memory(
    file: &GgufFile,
    spec: &ModelSpec,
    range: LayerRange,
    load: &StageLoad,
) -> StageMemory {
    MemoryProfile::from_gguf(file, spec).stage_memory(range, load)
}

/// The [`StageLoad`] of a `LoadSlice` request: `kv_tokens` positions (the
/// stage's pool), batches of at most `batch_tokens`, and as many sequences
/// of `seq_tokens` (each in whole blocks) as the pool holds, at least one,
/// with K/V stored as `kv_type`.
pub fn stage_load(
    kv_tokens: usize,
    seq_tokens: usize,
    batch_tokens: usize,
    kv_type: KvType,
) -> StageLoad {
    let per_seq = seq_tokens
        .div_ceil(KV_BLOCK_TOKENS)
        .max(1)
        .saturating_mul(KV_BLOCK_TOKENS);
    StageLoad {
        kv_tokens,
        kv_type,
        batch_tokens,
        sequences: (kv_tokens / per_seq).max(1),
    }
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
/// `DIR/<first 32 hex digits of the digest>-layers-<first>-<end>.gguf`, at
/// most `max_bytes` of them (least recently used go first).
#[derive(Debug, Clone)]
pub struct SliceCache {
    dir: PathBuf,
    max_bytes: u64,
}

/// Tells concurrent pushes' partial files apart.
static PUSHES: AtomicU64 = AtomicU64::new(0);

impl SliceCache {
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        SliceCache {
            dir: dir.into(),
            max_bytes,
        }
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

    /// Marks a cached slice as just used (eviction goes by modification time).
    pub fn touch(&self, path: &Path) {
        let _ = std::fs::File::options()
            .write(true)
            .open(path)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
    }

    /// Writes a pushed slice: `next_chunk` yields `(tensor index, bytes)` in
    /// tensor order (blocking; `None` ends the stream). The file appears
    /// under its final name only once complete and its slice hash is
    /// `expected_hash`; then older slices go until the cache fits its cap.
    pub fn write(
        &self,
        slice: &PushedSlice,
        expected_hash: &str,
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
        let declared: u64 = w.tensors().iter().map(|t| t.size_bytes).sum();
        if declared > self.max_bytes {
            return Err(SliceCacheError::Push(format!(
                "{} MiB of tensors is more than the whole slice cache may hold ({} MiB, --cache-max)",
                declared >> 20,
                self.max_bytes >> 20
            )));
        }
        let path = self.path_for(&slice.digest, slice.range);
        // Unique per push: two pushes of one slice never share a file.
        let partial = self.dir.join(format!(
            ".{}.{}-{}.partial",
            path.file_name()
                .map_or("slice".into(), |n| n.to_string_lossy()),
            std::process::id(),
            PUSHES.fetch_add(1, Ordering::Relaxed)
        ));
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
        if let Err(e) = check_slice_hash(&partial, slice.range, expected_hash) {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
        std::fs::rename(&partial, &path).map_err(io_err(&path))?;
        self.evict(&path);
        Ok((path, total))
    }

    /// Removes the least recently used slices (not `keep`) until the cache
    /// fits `max_bytes`.
    fn evict(&self, keep: &Path) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut slices: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "gguf"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        let mut total: u64 = slices.iter().map(|s| s.1).sum();
        slices.sort();
        for (_, len, path) in slices {
            if total <= self.max_bytes {
                break;
            }
            if path != keep && std::fs::remove_file(&path).is_ok() {
                tracing::info!("slice cache over its cap: removed {}", path.display());
                total -= len;
            }
        }
    }
}

/// Fails unless the slice of `range` in the file at `path` has `expected`
/// as its slice hash.
pub fn check_slice_hash(
    path: &Path,
    range: LayerRange,
    expected: &str,
) -> Result<(), SliceCacheError> {
    let file = GgufFile::open(path).map_err(|e| SliceCacheError::Push(e.to_string()))?;
    let hp = ModelSpec::from_gguf(&file).map_err(|e| SliceCacheError::Push(e.to_string()))?;
    let got = strata_model::slice_hash::slice_hash(&file, range, hp.n_layers);
    if got != expected {
        return Err(SliceCacheError::Push(format!(
            "what arrived for layers {range} hashes to {got}, not the {expected} it was sent as"
        )));
    }
    Ok(())
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

    /// A tiny synthetic llama on disk, open.
    fn tiny_model(dir: &Path) -> GgufFile {
        use strata_model::arch::Architecture;
        use strata_model::synth::{QuantScheme, SynthSpec};
        let path = dir.join("tiny.gguf");
        SynthSpec::from_preset(
            Architecture::Llama,
            "tiny",
            QuantScheme::Uniform(GgmlType::F32),
        )
        .unwrap()
        .write(&path, |_, _| {})
        .unwrap();
        GgufFile::open(&path).unwrap()
    }

    /// What the coordinator pushes for `range` of `model`: the header's
    /// slice, its hash, and its chunks (in two pieces per tensor).
    fn push_of(
        model: &GgufFile,
        range: LayerRange,
    ) -> (PushedSlice, String, Vec<(usize, Vec<u8>)>) {
        let hp = ModelSpec::from_gguf(model).unwrap();
        let tensors = slice_tensors(model, range, hp.n_layers);
        let slice = PushedSlice {
            digest: "sha256:abcd".into(),
            range,
            metadata: model.metadata.clone(),
            tensors: tensors
                .iter()
                .map(|t| (t.name.clone(), t.dims.clone(), t.dtype))
                .collect(),
        };
        let chunks = tensors
            .iter()
            .enumerate()
            .flat_map(|(i, t)| {
                let data = model.tensor_data(t);
                let (a, b) = data.split_at(data.len() / 2);
                [(i, a.to_vec()), (i, b.to_vec())]
            })
            .collect();
        let hash = strata_model::slice_hash::slice_hash(model, range, hp.n_layers);
        (slice, hash, chunks)
    }

    #[test]
    fn pushed_slice_round_trips_through_the_cache_when_its_hash_checks_out() {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_model(dir.path());
        let cache = SliceCache::new(dir.path().join("cache"), u64::MAX);
        let range = LayerRange { first: 0, end: 1 };
        let (slice, hash, chunks) = push_of(&model, range);
        let mut it = chunks.clone().into_iter();
        let (path, bytes) = cache.write(&slice, &hash, || it.next()).unwrap();
        assert!(bytes > 0);
        assert_eq!(cache.find("sha256:abcd", range), Some(path.clone()));
        assert_eq!(cache.find("sha256:abce", range), None);
        check_slice_hash(&path, range, &hash).unwrap();

        // One flipped byte: refused, and nothing is left behind.
        let other = LayerRange { first: 0, end: 2 };
        let (slice2, hash2, mut chunks2) = push_of(&model, other);
        chunks2[3].1[0] ^= 1;
        let mut it = chunks2.into_iter();
        let err = cache.write(&slice2, &hash2, || it.next()).unwrap_err();
        assert!(err.to_string().contains("hashes to"), "{err}");
        assert_eq!(cache.find("sha256:abcd", other), None);
        // A short stream: the same.
        let (_, _, mut short) = push_of(&model, other);
        short.pop();
        let mut it = short.into_iter();
        assert!(cache.write(&slice2, &hash2, || it.next()).is_err());
        let left: Vec<_> = std::fs::read_dir(cache.dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 1, "only the good slice: {left:?}");
    }

    #[test]
    fn the_cache_keeps_to_its_cap_dropping_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_model(dir.path());
        let ranges = [0..1, 1..2, 0..2].map(|r| LayerRange {
            first: r.start,
            end: r.end,
        });
        let pushes: Vec<_> = ranges.iter().map(|&r| push_of(&model, r)).collect();
        let size = |p: &(PushedSlice, String, Vec<(usize, Vec<u8>)>)| -> u64 {
            p.2.iter().map(|c| c.1.len() as u64).sum()
        };
        let unlimited = SliceCache::new(dir.path().join("cache"), u64::MAX);
        let mut paths = Vec::new();
        for (slice, hash, chunks) in &pushes[..2] {
            let mut it = chunks.clone().into_iter();
            paths.push(unlimited.write(slice, hash, || it.next()).unwrap().0);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Room for the first slice and the third (each file is its tensors
        // plus the same metadata), not for all three.
        let file_len = |p: &PathBuf| std::fs::metadata(p).unwrap().len();
        let header = file_len(&paths[0]) - size(&pushes[0]);
        let cap = file_len(&paths[0]) + size(&pushes[2]) + header + 4096;
        assert!(cap < file_len(&paths[0]) + file_len(&paths[1]) + size(&pushes[2]) + header);
        let cache = SliceCache::new(dir.path().join("cache"), cap);
        // Using the first makes the second the least recently used.
        cache.touch(&paths[0]);
        let (slice, hash, chunks) = &pushes[2];
        let mut it = chunks.clone().into_iter();
        let third = cache.write(slice, hash, || it.next()).unwrap().0;
        assert!(third.exists() && paths[0].exists());
        assert!(!paths[1].exists(), "the least recently used slice went");

        // A slice larger than the whole cap is refused before it is written.
        let tiny = SliceCache::new(dir.path().join("tiny"), 1024);
        let mut it = chunks.clone().into_iter();
        let err = tiny.write(slice, hash, || it.next()).unwrap_err();
        assert!(err.to_string().contains("--cache-max"), "{err}");
    }

    #[test]
    fn cache_paths_are_per_digest_and_range() {
        let c = SliceCache::new("/tmp/x", u64::MAX);
        let a = c.path_for("sha256:00ff", LayerRange { first: 0, end: 7 });
        assert!(a.ends_with("00ff-layers-0-7.gguf"));
        assert_ne!(
            a,
            c.path_for("sha256:00ff", LayerRange { first: 7, end: 20 })
        );
    }
}
