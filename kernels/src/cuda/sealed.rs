//! Compiled kernels on disk are used only if they are what this build
//! wrote: beside each file lies a seal, the BLAKE3 hash of what it was built
//! from (all of its source text and flags) and of its bytes. A file that
//! was truncated, swapped, or built from other sources fails the check and
//! is built again.

use std::path::{Path, PathBuf};

fn seal_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".seal");
    path.with_file_name(name)
}

/// The key of a build: every input, length-prefixed.
pub fn source_key(parts: &[&str]) -> String {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

fn seal_of(key: &str, bytes: &[u8]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"strata-kernel-seal-v1");
    h.update(key.as_bytes());
    h.update(bytes);
    h.finalize().to_hex().to_string()
}

/// Writes the seal of the file at `path` (just built from `key`).
pub fn seal(path: &Path, key: &str) -> std::io::Result<()> {
    // A temporary name of this call's own: tests of one process seal the
    // same file from several threads at once (a name per process only let
    // one thread's rename take another's file).
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let bytes = std::fs::read(path)?;
    let out = seal_path(path);
    let mut tmp = out.clone().into_os_string();
    tmp.push(format!(".{}-{n}.tmp", std::process::id()));
    std::fs::write(&tmp, seal_of(key, &bytes))?;
    std::fs::rename(&tmp, &out)
}

/// The file's bytes when it exists and its seal matches `key`. A file that
/// exists but does not match is reported once here.
pub fn read(path: &Path, key: &str) -> Option<Vec<u8>> {
    let bytes = std::fs::read(path).ok()?;
    let seal = std::fs::read_to_string(seal_path(path)).unwrap_or_default();
    if seal.trim() == seal_of(key, &bytes) {
        return Some(bytes);
    }
    tracing::warn!(
        "{} does not match its seal (damaged, replaced or stale): building it again",
        path.display()
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_file_reads_back_and_any_change_breaks_the_seal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.cubin");
        let key = source_key(&["__global__ void k() {}", "-arch=sm_90"]);
        assert_eq!(read(&path, &key), None, "missing");
        std::fs::write(&path, b"compiled bytes").unwrap();
        assert_eq!(read(&path, &key), None, "never sealed");
        seal(&path, &key).unwrap();
        assert_eq!(read(&path, &key).as_deref(), Some(&b"compiled bytes"[..]));
        // Built from other sources: not this one.
        let other = source_key(&["__global__ void k() { }", "-arch=sm_90"]);
        assert_eq!(read(&path, &other), None);
        // One byte changed, or cut short.
        std::fs::write(&path, b"compiled bytez").unwrap();
        assert_eq!(read(&path, &key), None);
        std::fs::write(&path, b"compiled").unwrap();
        assert_eq!(read(&path, &key), None);
        // Source parts are length-prefixed: moving text between them counts.
        assert_ne!(source_key(&["ab", "c"]), source_key(&["a", "bc"]));
    }

    #[test]
    fn threads_sealing_one_file_at_once_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.so");
        std::fs::write(&path, b"compiled bytes").unwrap();
        let key = source_key(&["k"]);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..50 {
                        seal(&path, &key).unwrap();
                    }
                });
            }
        });
        assert!(read(&path, &key).is_some());
    }
}
