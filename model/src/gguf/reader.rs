//! The GGUF parser. Every count and offset read from the file is checked
//! against what the file can hold before it is used.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::split::{
    parse_shard_path, shard_path, SplitInfo, KEY_SPLIT_COUNT, KEY_SPLIT_TENSORS_COUNT,
};
use super::value::MetaValue;
use crate::quant::GgmlType;

pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most 4 dimensions.
pub const MAX_DIMS: u32 = 4;
/// Nesting depth of metadata arrays we accept (GGUF writers use 1).
const MAX_ARRAY_DEPTH: u32 = 2;
/// Longest string we accept (key, value or tensor name). Real metadata
/// strings (chat templates) are tens of KiB; this bounds what a corrupted
/// length in a 40 GB file can make us copy.
pub const MAX_STRING_BYTES: u64 = 64 << 20;
/// Most elements in one metadata array. Real vocabularies and merge lists
/// hold under a million; each element costs ~32 bytes in memory.
pub const MAX_ARRAY_ELEMS: u64 = 1 << 24;
/// Most entries reserved up front from a count read from the file; past it
/// vectors grow as entries actually parse.
const MAX_RESERVE: u64 = 1 << 16;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a GGUF file (magic {magic:02x?}, expected \"GGUF\")")]
    BadMagic { path: PathBuf, magic: [u8; 4] },
    #[error("{path}: unsupported GGUF version {version} (supported: 2, 3)")]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("{path}: truncated: {what} at byte {offset} needs {needed} bytes, file has {len}")]
    Truncated {
        path: PathBuf,
        what: String,
        offset: u64,
        needed: u64,
        len: u64,
    },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("{path}: tensor {tensor:?}: {what}")]
    BadTensor {
        path: PathBuf,
        tensor: String,
        what: String,
    },
    #[error("{path}: metadata key {key:?}: {what}")]
    BadMetadata {
        path: PathBuf,
        key: String,
        what: String,
    },
    #[error("{path}: split model: {what}")]
    Split { path: PathBuf, what: String },
}

/// Where one tensor lives and what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the row length (contiguous), `dims[1]` the rows.
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    /// Offset from the start of the data section of its shard.
    pub offset: u64,
    /// Index of the shard (split file) holding the data.
    pub shard: usize,
    pub size_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Elements per row (`dims[0]`).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }
    /// Number of rows (product of dims past the first).
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }
}

struct Shard {
    path: PathBuf,
    map: Mmap,
    data_start: u64,
}

/// An open GGUF model (one file or all shards of a split model).
pub struct GgufFile {
    shards: Vec<Shard>,
    pub version: u32,
    pub alignment: u64,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    index: BTreeMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path())
            .field("version", &self.version)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and validates a GGUF file. A shard of a split model
    /// (`PREFIX-00001-of-00003.gguf`, with `split.*` metadata) opens all its
    /// shards: tensors are merged, metadata comes from the first shard.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let first = map_shard(path)?;
        let Some(split) = SplitInfo::from_metadata(path, &first.1.metadata)? else {
            return Self::assemble(vec![first]);
        };
        if split.count == 1 {
            return Self::assemble(vec![first]);
        }
        let split_err = |what: String| GgufError::Split {
            path: path.to_path_buf(),
            what,
        };
        let (prefix, name_no, name_count) = parse_shard_path(path).ok_or_else(|| {
            split_err(format!(
                "{KEY_SPLIT_COUNT} is {} but the file name does not follow PREFIX-%05d-of-%05d.gguf",
                split.count
            ))
        })?;
        if (name_no, name_count) != (split.no, split.count) {
            return Err(split_err(format!(
                "the name says shard {} of {name_count} but the metadata says shard {} of {}",
                name_no + 1,
                split.no + 1,
                split.count
            )));
        }
        let mut first = Some(first);
        let mut parts = Vec::with_capacity(split.count);
        for no in 0..split.count {
            let part = match first.take_if(|_| no == split.no) {
                Some(part) => part,
                None => {
                    let shard_path = shard_path(&prefix, no, split.count);
                    if !shard_path.exists() {
                        return Err(GgufError::Split {
                            path: shard_path,
                            what: format!(
                                "shard {} of {} is missing (opened from {})",
                                no + 1,
                                split.count,
                                path.display()
                            ),
                        });
                    }
                    map_shard(&shard_path)?
                }
            };
            parts.push(part);
        }
        Self::assemble(parts)
    }

    /// Parses GGUF bytes already in memory (for tests and fuzzing): the bytes
    /// are copied into an anonymous map.
    pub fn from_bytes(name: &str, bytes: &[u8]) -> Result<Self, GgufError> {
        Self::from_shard_bytes(&[(name, bytes)])
    }

    /// Parses all shards of a split model from memory, in shard order.
    pub fn from_shard_bytes(shards: &[(&str, &[u8])]) -> Result<Self, GgufError> {
        let mut parts = Vec::with_capacity(shards.len());
        for &(name, bytes) in shards {
            let path = PathBuf::from(name);
            let mut anon =
                memmap2::MmapMut::map_anon(bytes.len().max(1)).map_err(|source| GgufError::Io {
                    path: path.clone(),
                    source,
                })?;
            anon[..bytes.len()].copy_from_slice(bytes);
            let map = anon.make_read_only().map_err(|source| GgufError::Io {
                path: path.clone(),
                source,
            })?;
            let parsed = parse(&path, &map[..bytes.len()], parts.len())?;
            parts.push((
                Shard {
                    path,
                    map,
                    data_start: parsed.data_start,
                },
                parsed,
            ));
        }
        Self::assemble(parts)
    }

    /// Checks the shards against each other and merges their tensor lists.
    fn assemble(parts: Vec<(Shard, Parsed)>) -> Result<Self, GgufError> {
        let Some(first) = parts.first() else {
            return Err(GgufError::Split {
                path: PathBuf::new(),
                what: "no shards given".into(),
            });
        };
        let first_path = first.0.path.clone();
        let first_split = SplitInfo::from_metadata(&first_path, &first.1.metadata)?;
        let n_tensors: u64 = parts.iter().map(|(_, p)| p.tensors.len() as u64).sum();
        if let Some(s) = first_split {
            if s.tensors_count != n_tensors {
                return Err(GgufError::Split {
                    path: first_path,
                    what: format!(
                        "{KEY_SPLIT_TENSORS_COUNT} is {} but the shards hold {n_tensors} tensors",
                        s.tensors_count
                    ),
                });
            }
        }
        for (no, (shard, parsed)) in parts.iter().enumerate() {
            let split = SplitInfo::from_metadata(&shard.path, &parsed.metadata)?;
            let expected = SplitInfo {
                no,
                count: parts.len(),
                tensors_count: n_tensors,
            };
            let consistent = match split {
                None => parts.len() == 1,
                Some(s) => s == expected,
            };
            if !consistent {
                let found = split.map_or("no split keys".to_string(), |s| {
                    format!(
                        "shard {} of {} with {} tensors in all",
                        s.no + 1,
                        s.count,
                        s.tensors_count
                    )
                });
                return Err(GgufError::Split {
                    path: shard.path.clone(),
                    what: format!(
                        "expected shard {} of {} with {n_tensors} tensors in all, the metadata says {found}",
                        no + 1,
                        parts.len()
                    ),
                });
            }
        }
        let mut parts = parts.into_iter();
        let Some((shard0, parsed0)) = parts.next() else {
            return Err(GgufError::Split {
                path: PathBuf::new(),
                what: "no shards given".into(),
            });
        };
        let mut gguf = GgufFile {
            shards: vec![shard0],
            version: parsed0.version,
            alignment: parsed0.alignment,
            metadata: parsed0.metadata,
            tensors: parsed0.tensors,
            index: BTreeMap::new(),
        };
        for (shard, parsed) in parts {
            let no = gguf.shards.len();
            gguf.tensors.extend(
                parsed
                    .tensors
                    .into_iter()
                    .map(|t| TensorInfo { shard: no, ..t }),
            );
            gguf.shards.push(shard);
        }
        gguf.build_index()?;
        Ok(gguf)
    }

    pub(crate) fn build_index(&mut self) -> Result<(), GgufError> {
        self.index.clear();
        for (i, t) in self.tensors.iter().enumerate() {
            if self.index.insert(t.name.clone(), i).is_some() {
                return Err(GgufError::BadTensor {
                    path: self.shards[t.shard].path.clone(),
                    tensor: t.name.clone(),
                    what: "appears twice".into(),
                });
            }
        }
        Ok(())
    }

    /// Path of the (first) file.
    pub fn path(&self) -> &Path {
        &self.shards[0].path
    }

    /// Paths of all shards, in order (one for an unsplit file).
    pub fn shard_paths(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw bytes of a tensor, borrowed from the map.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let shard = &self.shards[info.shard];
        let start = (shard.data_start + info.offset) as usize;
        &shard.map[start..start + info.size_bytes as usize]
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(MetaValue::as_str)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(MetaValue::as_u64)
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(MetaValue::as_f64)
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(MetaValue::as_bool)
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// Total bytes of all tensor data.
    pub fn tensor_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.size_bytes).sum()
    }
}

/// Maps one file and parses it.
fn map_shard(path: &Path) -> Result<(Shard, Parsed), GgufError> {
    let file = File::open(path).map_err(|source| GgufError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: the map is read-only; a file changed underneath us can give
    // wrong numbers but every read is bounds-checked against the map.
    let map = unsafe { Mmap::map(&file) }.map_err(|source| GgufError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let parsed = parse(path, &map, 0)?;
    Ok((
        Shard {
            path: path.to_path_buf(),
            map,
            data_start: parsed.data_start,
        },
        parsed,
    ))
}

struct Parsed {
    version: u32,
    alignment: u64,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
    data_start: u64,
}

/// A bounds-checked cursor over the file bytes.
struct Cursor<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], GgufError> {
        let remaining = (self.bytes.len() - self.pos) as u64;
        if n > remaining {
            return Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                what: what.to_string(),
                offset: self.pos as u64,
                needed: n,
                len: self.bytes.len() as u64,
            });
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let at = self.pos;
        let len = self.u64(what)?;
        if len > MAX_STRING_BYTES {
            return Err(self.invalid(format!(
                "{what} at byte {at} has absurd length {len} (limit {MAX_STRING_BYTES})"
            )));
        }
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.invalid(format!("{what} is not valid UTF-8")))
    }
    fn invalid(&self, what: String) -> GgufError {
        GgufError::Invalid {
            path: self.path.to_path_buf(),
            what,
        }
    }
}

/// Smallest encoded size of a value of a GGUF type, to bound array counts.
fn min_encoded_size(type_id: u32) -> Option<u64> {
    Some(match type_id {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4 | 5 | 6 => 4,
        10 | 11 | 12 => 8,
        8 => 8,     // string: its u64 length
        9 => 4 + 8, // array: type + count
        _ => return None,
    })
}

fn read_value(
    c: &mut Cursor<'_>,
    type_id: u32,
    key: &str,
    depth: u32,
) -> Result<MetaValue, GgufError> {
    let what = || format!("value of {key:?}");
    Ok(match type_id {
        0 => MetaValue::U8(c.array::<1>(&what())?[0]),
        1 => MetaValue::I8(c.array::<1>(&what())?[0] as i8),
        2 => MetaValue::U16(u16::from_le_bytes(c.array(&what())?)),
        3 => MetaValue::I16(i16::from_le_bytes(c.array(&what())?)),
        4 => MetaValue::U32(u32::from_le_bytes(c.array(&what())?)),
        5 => MetaValue::I32(i32::from_le_bytes(c.array(&what())?)),
        6 => MetaValue::F32(f32::from_le_bytes(c.array(&what())?)),
        7 => match c.array::<1>(&what())?[0] {
            0 => MetaValue::Bool(false),
            1 => MetaValue::Bool(true),
            b => {
                return Err(GgufError::BadMetadata {
                    path: c.path.to_path_buf(),
                    key: key.to_string(),
                    what: format!("bool byte {b} is neither 0 nor 1"),
                })
            }
        },
        8 => MetaValue::String(c.string(&what())?),
        9 => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(GgufError::BadMetadata {
                    path: c.path.to_path_buf(),
                    key: key.to_string(),
                    what: format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"),
                });
            }
            let elem_type = c.u32(&what())?;
            let count = c.u64(&what())?;
            let min = min_encoded_size(elem_type).ok_or_else(|| GgufError::BadMetadata {
                path: c.path.to_path_buf(),
                key: key.to_string(),
                what: format!("unknown array element type {elem_type}"),
            })?;
            if count > MAX_ARRAY_ELEMS {
                return Err(GgufError::BadMetadata {
                    path: c.path.to_path_buf(),
                    key: key.to_string(),
                    what: format!(
                        "array of {count} elements is beyond the limit of {MAX_ARRAY_ELEMS}"
                    ),
                });
            }
            // Never allocate by a count the file cannot hold.
            if count.saturating_mul(min) > c.remaining() {
                return Err(GgufError::BadMetadata {
                    path: c.path.to_path_buf(),
                    key: key.to_string(),
                    what: format!(
                        "array of {count} elements cannot fit in the {} bytes left",
                        c.remaining()
                    ),
                });
            }
            let mut items = Vec::with_capacity(count.min(MAX_RESERVE) as usize);
            for _ in 0..count {
                items.push(read_value(c, elem_type, key, depth + 1)?);
            }
            MetaValue::Array(items)
        }
        10 => MetaValue::U64(u64::from_le_bytes(c.array(&what())?)),
        11 => MetaValue::I64(i64::from_le_bytes(c.array(&what())?)),
        12 => MetaValue::F64(f64::from_le_bytes(c.array(&what())?)),
        t => {
            return Err(GgufError::BadMetadata {
                path: c.path.to_path_buf(),
                key: key.to_string(),
                what: format!("unknown value type {t}"),
            })
        }
    })
}

fn parse(path: &Path, bytes: &[u8], shard: usize) -> Result<Parsed, GgufError> {
    let mut c = Cursor {
        path,
        bytes,
        pos: 0,
    };
    let magic: [u8; 4] = c.array("magic")?;
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic {
            path: path.to_path_buf(),
            magic,
        });
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion {
            path: path.to_path_buf(),
            version,
        });
    }
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.u64("metadata count")?;
    // A key is at least a u64 length plus a u32 type plus one byte of value;
    // a tensor info at least name length + n_dims + one dim + type + offset.
    if n_kv.saturating_mul(13) > c.remaining() {
        return Err(c.invalid(format!(
            "metadata count {n_kv} cannot fit in a {}-byte file",
            bytes.len()
        )));
    }
    if n_tensors.saturating_mul(8 + 4 + 8 + 4 + 8) > c.remaining() {
        return Err(c.invalid(format!(
            "tensor count {n_tensors} cannot fit in a {}-byte file",
            bytes.len()
        )));
    }

    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = c.string("metadata key")?;
        let type_id = c.u32("metadata type")?;
        let value = read_value(&mut c, type_id, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(GgufError::BadMetadata {
                path: path.to_path_buf(),
                key,
                what: "appears twice".into(),
            });
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
            _ => {
                return Err(GgufError::BadMetadata {
                    path: path.to_path_buf(),
                    key: "general.alignment".into(),
                    what: format!("{v} is not a power of two up to 1 MiB"),
                })
            }
        },
    };

    let mut tensors = Vec::with_capacity(n_tensors.min(MAX_RESERVE) as usize);
    for _ in 0..n_tensors {
        let name = c.string("tensor name")?;
        let bad = |what: String| GgufError::BadTensor {
            path: path.to_path_buf(),
            tensor: name.clone(),
            what,
        };
        let n_dims = c.u32("tensor dims")?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(bad(format!(
                "{n_dims} dimensions (1 to {MAX_DIMS} allowed)"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64("tensor dim")?);
        }
        let type_id = c.u32("tensor type")?;
        let offset = c.u64("tensor offset")?;
        let dtype = GgmlType::from_id(type_id)
            .ok_or_else(|| bad(format!("unknown tensor type id {type_id}")))?;
        if dims.contains(&0) {
            return Err(bad(format!("zero-sized dimension in {dims:?}")));
        }
        let n_elems = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
        if dims[0] % dtype.block_elems() as u64 != 0 {
            return Err(bad(format!(
                "row of {} elements is not a whole number of {dtype} blocks of {}",
                dims[0],
                dtype.block_elems()
            )));
        }
        let size_bytes = dtype
            .row_bytes(n_elems)
            .ok_or_else(|| bad(format!("size of {n_elems} {dtype} elements overflows")))?;
        if offset % alignment != 0 {
            return Err(bad(format!(
                "data offset {offset} is not aligned to {alignment}"
            )));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            dtype,
            offset,
            shard,
            size_bytes,
        });
    }

    let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
    let file_len = bytes.len() as u64;
    if data_start > file_len && !tensors.is_empty() {
        return Err(GgufError::Truncated {
            path: path.to_path_buf(),
            what: "tensor data section".into(),
            offset: data_start,
            needed: 1,
            len: file_len,
        });
    }
    let data_len = file_len.saturating_sub(data_start);
    for t in &tensors {
        let end = t.offset.checked_add(t.size_bytes);
        if end.is_none_or(|e| e > data_len) {
            return Err(GgufError::BadTensor {
                path: path.to_path_buf(),
                tensor: t.name.clone(),
                what: format!(
                    "data [{}, +{}) lies outside the {data_len}-byte data section (file truncated or offset wrong)",
                    t.offset, t.size_bytes
                ),
            });
        }
    }
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
    by_offset.sort_by_key(|t| t.offset);
    for w in by_offset.windows(2) {
        if w[0].offset + w[0].size_bytes > w[1].offset {
            return Err(GgufError::BadTensor {
                path: path.to_path_buf(),
                tensor: w[1].name.clone(),
                what: format!("data overlaps tensor {:?}", w[0].name),
            });
        }
    }
    Ok(Parsed {
        version,
        alignment,
        metadata,
        tensors,
        data_start,
    })
}
