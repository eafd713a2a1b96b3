//! Kept KV blocks and state snapshots on disk, so a session survives a
//! restart: one file per block (or snapshot) and layer
//! (`<dir>/<layer>/<prefix hash>.kv`, `.state`), per layer rather than per
//! stage so that another placement after the restart still finds the
//! layers a worker holds. `dir` is the cache directory's folder for one
//! model and KV type.
//!
//! A file is a header (magic, version, the layer, the shape its bytes were
//! written for, the hash, the data's length and its blake3) then the
//! bytes. A file whose header or checksum does not match is ignored with a
//! log line and removed. A stage owns the folders of the layers it holds
//! (several stages of one process share `dir`, whatever their order) and
//! keeps them under a size cap: the oldest files go first.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use strata_kernels::KvGeometry;
use strata_model::profile::KvType;

use crate::kv_blocks::BlockHash;

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// One layer's share of a kept KV block.
    Block,
    /// One layer's state after a prefix (a recurrent state row, or a
    /// sliding-window ring): the prefix cache's snapshot.
    State,
}

impl FileKind {
    fn extension(self) -> &'static str {
        match self {
            FileKind::Block => "kv",
            FileKind::State => "state",
        }
    }

    fn magic(self) -> &'static [u8; 8] {
        match self {
            FileKind::Block => b"strataKV",
            FileKind::State => b"strataST",
        }
    }
}

/// The shape a file's bytes were written for (four numbers: a file of
/// another shape is not read).
pub type Shape = [u32; 4];

/// A KV block's shape: its KV type and row shape.
pub fn block_shape(geo: &KvGeometry) -> Shape {
    [
        geo.kv_type as u32,
        geo.n_kv_heads as u32,
        geo.head_dim_k as u32,
        geo.head_dim_v as u32,
    ]
}

const VERSION: u32 = 1;
/// magic, version, layer, shape, hash, data length, blake3.
const HEADER_BYTES: usize = 8 + 4 * 6 + 16 + 8 + 32;

pub struct DiskBlocks {
    dir: PathBuf,
    /// The layers whose folders this store owns.
    layers: Vec<usize>,
    cap_bytes: u64,
    /// Bytes of the files in those folders (counted at open, kept up to
    /// date).
    used_bytes: u64,
}

impl DiskBlocks {
    /// Opens (and creates) `dir` for the folders of `layers`, holding at
    /// most `cap_bytes` of blocks and states in them.
    pub fn open(dir: &Path, layers: &[usize], cap_bytes: u64) -> io::Result<DiskBlocks> {
        fs::create_dir_all(dir)?;
        let mut d = DiskBlocks {
            dir: dir.to_path_buf(),
            layers: layers.to_vec(),
            cap_bytes,
            used_bytes: 0,
        };
        d.used_bytes = d.files()?.iter().map(|f| f.1).sum();
        Ok(d)
    }

    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    fn path(&self, kind: FileKind, layer: usize, hash: &BlockHash) -> PathBuf {
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        self.dir
            .join(layer.to_string())
            .join(format!("{hex}.{}", kind.extension()))
    }

    fn header(
        kind: FileKind,
        layer: usize,
        shape: Shape,
        hash: &BlockHash,
        data: &[u8],
    ) -> Vec<u8> {
        let mut h = Vec::with_capacity(HEADER_BYTES);
        h.extend_from_slice(kind.magic());
        for v in [VERSION, layer as u32].into_iter().chain(shape) {
            h.extend_from_slice(&v.to_le_bytes());
        }
        h.extend_from_slice(hash);
        h.extend_from_slice(&(data.len() as u64).to_le_bytes());
        h.extend_from_slice(blake3::hash(data).as_bytes());
        h
    }

    /// Saves one block (or state) of `layer` (written whole, then
    /// renamed into place), then trims the folder to its cap.
    pub fn write(
        &mut self,
        kind: FileKind,
        layer: usize,
        shape: Shape,
        hash: &BlockHash,
        data: &[u8],
    ) -> io::Result<()> {
        let path = self.path(kind, layer, hash);
        if path.exists() {
            return Ok(());
        }
        let len = (HEADER_BYTES + data.len()) as u64;
        if len > self.cap_bytes {
            return Ok(());
        }
        fs::create_dir_all(path.parent().expect("a layer folder"))?;
        let tmp = path.with_extension("tmp");
        {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&Self::header(kind, layer, shape, hash, data))?;
            f.write_all(data)?;
        }
        fs::rename(&tmp, &path)?;
        self.used_bytes += len;
        self.trim()
    }

    /// The block (or state) saved for `layer` and `hash`, if it is there
    /// and whole and was written for this shape.
    pub fn read(
        &self,
        kind: FileKind,
        layer: usize,
        shape: Shape,
        hash: &BlockHash,
    ) -> Option<Vec<u8>> {
        let path = self.path(kind, layer, hash);
        let mut bytes = Vec::new();
        fs::File::open(&path).ok()?.read_to_end(&mut bytes).ok()?;
        let fail = |why: &str| {
            tracing::warn!("ignoring KV cache file {}: {why}", path.display());
            let _ = fs::remove_file(&path);
            None
        };
        if bytes.len() < HEADER_BYTES {
            return fail("shorter than its header");
        }
        let (head, data) = bytes.split_at(HEADER_BYTES);
        if head != Self::header(kind, layer, shape, hash, data).as_slice() {
            return fail(
                "its header or checksum does not match (another model, KV type or a damaged file)",
            );
        }
        Some(data.to_vec())
    }

    /// The hashes of the blocks (or states) saved for `layer` (by file
    /// name; read checks them).
    pub fn hashes(&self, kind: FileKind, layer: usize) -> std::collections::HashSet<BlockHash> {
        let Ok(entries) = fs::read_dir(self.dir.join(layer.to_string())) else {
            return Default::default();
        };
        entries
            .filter_map(|e| {
                let name = e.ok()?.file_name();
                let hex = name.to_str()?.strip_suffix(kind.extension())?;
                let hex = hex.strip_suffix('.')?;
                let mut h = [0u8; 16];
                if hex.len() != 32 {
                    return None;
                }
                for (i, b) in h.iter_mut().enumerate() {
                    *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
                }
                Some(h)
            })
            .collect()
    }

    /// Removes the oldest files until the folder fits its cap, with a tenth
    /// to spare (so that a full folder is not listed at every write).
    fn trim(&mut self) -> io::Result<()> {
        if self.used_bytes <= self.cap_bytes {
            return Ok(());
        }
        let target = self.cap_bytes - self.cap_bytes / 10;
        let mut all = self.files()?;
        all.sort_by_key(|f| f.2);
        self.used_bytes = all.iter().map(|f| f.1).sum();
        for (path, len, _) in all {
            if self.used_bytes <= target {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                self.used_bytes -= len;
            }
        }
        Ok(())
    }
}

/// What a cache directory holds for one model and KV type: the layers with
/// at least one block or state file (a sliding-window or recurrent layer
/// saves only states).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedLayers {
    /// The model's digest, from its folder's name ([`digest_folder`]).
    pub digest: String,
    pub kv_type: KvType,
    pub layers: Vec<u32>,
}

/// Model folders, KV types and layers listed at most (a cache directory
/// holds a few models; a stranger's folder is not read to the end).
const MAX_LISTED: usize = 64;
const MAX_LAYERS: u32 = 4096;

/// The folder of a model's files under a cache directory: its digest
/// (`sha256:<hex>`) with the `:` made a `-`.
pub fn digest_folder(digest: &str) -> String {
    digest.replace(':', "-")
}

/// The digest a model folder is named for, if it is one.
fn folder_digest(folder: &str) -> Option<String> {
    let hex = folder.strip_prefix("sha256-")?;
    let valid = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    valid.then(|| format!("sha256:{hex}"))
}

/// The layers whose blocks are saved under the cache directory `root`
/// (`<root>/<model>/<kv type>/<layer>/*.kv`, as [`DiskBlocks`] writes
/// them), sorted; a folder that cannot be read counts as empty.
pub fn saved_layers(root: &Path) -> Vec<SavedLayers> {
    let folders = |dir: &Path| -> Vec<(String, PathBuf)> {
        let Ok(entries) = fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut out: Vec<(String, PathBuf)> = entries
            .filter_map(|e| {
                let e = e.ok()?;
                e.file_type().ok()?.is_dir().then_some(())?;
                Some((e.file_name().into_string().ok()?, e.path()))
            })
            .take(MAX_LISTED * 4)
            .collect();
        out.sort();
        out
    };
    let has_saved = |dir: &Path| {
        fs::read_dir(dir).is_ok_and(|entries| {
            entries.take(MAX_LISTED).any(|e| {
                e.is_ok_and(|e| {
                    let path = e.path();
                    [FileKind::Block, FileKind::State]
                        .iter()
                        .any(|k| path.extension().is_some_and(|x| x == k.extension()))
                })
            })
        })
    };
    let mut out = Vec::new();
    for (model, model_dir) in folders(root).into_iter().take(MAX_LISTED) {
        let Some(digest) = folder_digest(&model) else {
            continue;
        };
        for (kv_name, kv_dir) in folders(&model_dir).into_iter().take(MAX_LISTED) {
            let Some(kv_type) = KvType::from_name(&kv_name) else {
                continue;
            };
            let mut layers: Vec<u32> = folders(&kv_dir)
                .into_iter()
                .filter_map(|(name, dir)| {
                    let layer = name.parse::<u32>().ok().filter(|&l| l < MAX_LAYERS)?;
                    has_saved(&dir).then_some(layer)
                })
                .collect();
            layers.sort_unstable();
            if !layers.is_empty() {
                out.push(SavedLayers {
                    digest: digest.clone(),
                    kv_type,
                    layers,
                });
            }
        }
    }
    out
}

impl DiskBlocks {
    /// Every block and state file in the owned layer folders: path, length
    /// and modification time.
    fn files(&self) -> io::Result<Vec<(PathBuf, u64, std::time::SystemTime)>> {
        let mut out = Vec::new();
        for layer in &self.layers {
            let folder = self.dir.join(layer.to_string());
            if !folder.is_dir() {
                continue;
            }
            collect_files(&folder, &mut out)?;
        }
        Ok(out)
    }
}

/// The block and state files of one layer folder.
fn collect_files(
    folder: &Path,
    out: &mut Vec<(PathBuf, u64, std::time::SystemTime)>,
) -> io::Result<()> {
    for f in fs::read_dir(folder)? {
        let f = f?;
        let path = f.path();
        let ours = [FileKind::Block, FileKind::State]
            .iter()
            .any(|k| path.extension().is_some_and(|e| e == k.extension()));
        if ours {
            let m = f.metadata()?;
            out.push((path, m.len(), m.modified()?));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(kv_type: KvType) -> Shape {
        block_shape(&KvGeometry {
            n_layers: 2,
            n_kv_heads: 2,
            head_dim_k: 64,
            head_dim_v: 64,
            kv_type,
            n_blocks: 4,
        })
    }
    use FileKind::{Block, State};

    #[test]
    fn saved_layers_lists_the_layers_with_saved_files() {
        let root = tempfile::tempdir().unwrap();
        let digest = format!("sha256:{}", "ab".repeat(32));
        let dir = root.path().join(digest_folder(&digest)).join("q8_0");
        let mut d = DiskBlocks::open(&dir, &[2, 10, 3, 4], 1 << 20).unwrap();
        let shape = geo(KvType::Q8_0);
        for layer in [10, 2] {
            d.write(FileKind::Block, layer, shape, &[7; 16], &[1, 2, 3])
                .unwrap();
        }
        // A layer that saves states only (a ring or a recurrent layer).
        d.write(FileKind::State, 3, shape, &[7; 16], &[1]).unwrap();
        // Not saved layers: an empty folder, stray names, a foreign folder.
        fs::create_dir_all(dir.join("4")).unwrap();
        fs::create_dir_all(dir.join("notalayer")).unwrap();
        fs::write(root.path().join("stray.kv"), b"x").unwrap();
        fs::create_dir_all(root.path().join("sha256-zz").join("f16").join("1")).unwrap();
        fs::write(root.path().join("sha256-zz/f16/1/x.kv"), b"x").unwrap();
        assert_eq!(
            saved_layers(root.path()),
            vec![SavedLayers {
                digest,
                kv_type: KvType::Q8_0,
                layers: vec![2, 3, 10],
            }]
        );
        assert!(saved_layers(&root.path().join("missing")).is_empty());
    }

    #[test]
    fn blocks_round_trip_and_bad_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DiskBlocks::open(dir.path(), &[1, 2, 3], 1 << 20).unwrap();
        let (g, h) = (geo(KvType::Q8_0), [7u8; 16]);
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 31) as u8).collect();
        d.write(Block, 3, g, &h, &data).unwrap();
        assert_eq!(d.read(Block, 3, g, &h).as_deref(), Some(&data[..]));
        assert_eq!(d.hashes(Block, 3).len(), 1);
        // A state of the same layer and hash is another file.
        assert!(d.hashes(State, 3).is_empty());
        assert_eq!(d.read(State, 3, g, &h), None);
        d.write(State, 3, [9, 1, 2, 0], &h, &data[..10]).unwrap();
        assert_eq!(
            d.read(State, 3, [9, 1, 2, 0], &h).as_deref(),
            Some(&data[..10])
        );
        assert_eq!(d.read(Block, 3, g, &h).as_deref(), Some(&data[..]));
        // Another KV type or layer: not this block.
        assert_eq!(d.read(Block, 3, geo(KvType::F16), &h), None);
        assert_eq!(d.read(Block, 2, g, &h), None);
        // Still there for the right reader? The wrong type removed it.
        assert_eq!(d.read(Block, 3, g, &h), None);
        // A state file renamed to a block file: its magic says otherwise.
        let (state, block) = (d.path(State, 3, &h), d.path(Block, 3, &h));
        fs::rename(&state, &block).unwrap();
        assert_eq!(d.read(Block, 3, [9, 1, 2, 0], &h), None);
        // A flipped byte fails the checksum.
        d.write(Block, 1, g, &h, &data).unwrap();
        let path = d.path(Block, 1, &h);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(d.read(Block, 1, g, &h), None);
        assert!(!path.exists(), "a damaged file is removed");
    }

    #[test]
    fn the_folder_stays_under_its_cap_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let per_file = (HEADER_BYTES + 100) as u64;
        let mut d = DiskBlocks::open(dir.path(), &[0, 1], 3 * per_file).unwrap();
        let g = geo(KvType::F16);
        for i in 0..5u8 {
            let kind = if i % 2 == 0 { Block } else { State };
            d.write(kind, 0, g, &[i; 16], &[i; 100]).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // The fourth file goes over the cap: the two oldest go (down to
        // nine tenths of it); the fifth fits.
        assert_eq!(d.used_bytes(), 3 * per_file);
        let kept: Vec<bool> = (0..5u8)
            .map(|i| {
                let kind = if i % 2 == 0 { Block } else { State };
                d.read(kind, 0, g, &[i; 16]).is_some()
            })
            .collect();
        assert_eq!(kept, [false, false, true, true, true]);
        // Blocks and states count alike against the cap.
        assert_eq!((d.hashes(Block, 0).len(), d.hashes(State, 0).len()), (2, 1));
        assert!(d.hashes(Block, 0).contains(&[4u8; 16]) && d.hashes(Block, 1).is_empty());
        // Reopened: the same count.
        assert_eq!(
            DiskBlocks::open(dir.path(), &[0], 3 * per_file)
                .unwrap()
                .used_bytes(),
            3 * per_file
        );
        // Another stage's layers in the same folder: none of its files.
        let mut other = DiskBlocks::open(dir.path(), &[7], per_file).unwrap();
        assert_eq!(other.used_bytes(), 0);
        other.write(Block, 7, g, &[9; 16], &[9; 100]).unwrap();
        other.write(Block, 7, g, &[8; 16], &[8; 100]).unwrap();
        assert_eq!(
            d.hashes(Block, 0).len() + d.hashes(State, 0).len(),
            3,
            "not trimmed by another"
        );
    }
}
