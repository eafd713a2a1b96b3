//! A streaming GGUF v3 writer.
//!
//! The writer holds only the metadata and the tensor specs; tensor data is
//! supplied per tensor by a callback at write time, so a 40 GB synthetic model
//! never sits in memory:
//!
//! ```no_run
//! use strata_model::gguf::{GgufWriter, MetaValue};
//! use strata_model::GgmlType;
//! # fn main() -> Result<(), strata_model::gguf::GgufWriteError> {
//! let mut w = GgufWriter::new();
//! w.add_metadata("general.architecture", MetaValue::String("llama".into()));
//! w.add_tensor("token_embd.weight", &[64, 100], GgmlType::F32)?;
//! w.write("model.gguf", |_index, spec, out| out.write_all(&vec![0u8; spec.size_bytes as usize]))?;
//! # Ok(()) }
//! ```

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::reader::{
    GgufFile, TensorInfo, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ARRAY_ELEMS, MAX_DIMS,
    MAX_STRING_BYTES,
};
use super::split::{shard_path, KEY_SPLIT_COUNT, KEY_SPLIT_NO, KEY_SPLIT_TENSORS_COUNT};
use super::value::MetaValue;
use crate::quant::GgmlType;

/// The GGUF version this writer produces.
pub const WRITE_VERSION: u32 = 3;
const KEY_ALIGNMENT: &str = "general.alignment";

#[derive(Debug, thiserror::Error)]
pub enum GgufWriteError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("tensor {tensor:?}: {what}")]
    BadTensor { tensor: String, what: String },
    #[error("metadata key {key:?}: {what}")]
    BadMetadata { key: String, what: String },
    #[error(
        "{path}: tensor {tensor:?}: the data callback wrote {written} bytes, expected {expected}"
    )]
    WrongSize {
        path: PathBuf,
        tensor: String,
        expected: u64,
        written: u64,
    },
    #[error("split: {what}")]
    BadSplit { what: String },
    #[error("the header written does not read back: {0}")]
    Reread(Box<super::reader::GgufError>),
}

/// A tensor to be written: its shape, type and place in the data section.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    /// ggml order: `dims[0]` is the row length.
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    pub size_bytes: u64,
}

/// Limits for [`GgufWriter::write_split`]; a shard closes before a tensor
/// that would exceed either (a shard always holds at least one tensor).
#[derive(Debug, Clone, Copy, Default)]
pub struct SplitLimits {
    pub max_tensors: Option<usize>,
    pub max_bytes: Option<u64>,
}

/// Builds a GGUF file: metadata and tensor specs first, data streamed at write time.
#[derive(Debug, Clone, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<TensorSpec>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a metadata value, replacing any earlier value of the key (keys keep
    /// the order of their first insertion).
    pub fn add_metadata(&mut self, key: impl Into<String>, value: MetaValue) -> &mut Self {
        let key = key.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    /// Sets `general.alignment` (a power of two; the default is 32).
    pub fn set_alignment(&mut self, alignment: u32) -> &mut Self {
        self.add_metadata(KEY_ALIGNMENT, MetaValue::U32(alignment))
    }

    /// Adds a tensor and returns its index (the index the data callback gets).
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        dtype: GgmlType,
    ) -> Result<usize, GgufWriteError> {
        let name = name.into();
        let bad = |what: String| GgufWriteError::BadTensor {
            tensor: name.clone(),
            what,
        };
        if name.len() as u64 > MAX_STRING_BYTES {
            return Err(bad(format!(
                "name of {} bytes is over the limit of {MAX_STRING_BYTES}",
                name.len()
            )));
        }
        if dims.is_empty() || dims.len() > MAX_DIMS as usize {
            return Err(bad(format!(
                "{} dimensions (1 to {MAX_DIMS} allowed)",
                dims.len()
            )));
        }
        if dims.contains(&0) {
            return Err(bad(format!("zero-sized dimension in {dims:?}")));
        }
        if dims[0] % dtype.block_elems() as u64 != 0 {
            return Err(bad(format!(
                "row of {} elements is not a whole number of {dtype} blocks",
                dims[0]
            )));
        }
        let size_bytes = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .and_then(|n| dtype.row_bytes(n))
            .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(bad("added twice".into()));
        }
        self.tensors.push(TensorSpec {
            name,
            dims: dims.to_vec(),
            dtype,
            size_bytes,
        });
        Ok(self.tensors.len() - 1)
    }

    pub fn tensors(&self) -> &[TensorSpec] {
        &self.tensors
    }

    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }

    /// The file this writer would write, as the reader sees it, without its
    /// tensor data (every offset 0): what a memory profile or a plan needs
    /// of a synthetic model that is never written.
    pub fn layout(&self, name: &str) -> Result<GgufFile, GgufWriteError> {
        let mut meta = GgufWriter::new();
        for (k, v) in &self.metadata {
            meta.add_metadata(k.clone(), v.clone());
        }
        let bytes = meta.to_bytes(|_, _, _| Ok(()))?;
        let mut file =
            GgufFile::from_bytes(name, &bytes).map_err(|e| GgufWriteError::Reread(Box::new(e)))?;
        file.tensors = self
            .tensors
            .iter()
            .map(|t| TensorInfo {
                name: t.name.clone(),
                dims: t.dims.clone(),
                dtype: t.dtype,
                offset: 0,
                shard: 0,
                size_bytes: t.size_bytes,
            })
            .collect();
        // Lookups by name (`GgufFile::tensor`) see the tensors too: specs
        // decide some layer features by which tensors exist.
        file.build_index()
            .map_err(|e| GgufWriteError::Reread(Box::new(e)))?;
        Ok(file)
    }

    /// The data alignment this file will use.
    pub fn alignment(&self) -> Result<u64, GgufWriteError> {
        match self.metadata.iter().find(|(k, _)| k == KEY_ALIGNMENT) {
            None => Ok(DEFAULT_ALIGNMENT),
            Some((_, v)) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 20 => Ok(a),
                _ => Err(GgufWriteError::BadMetadata {
                    key: KEY_ALIGNMENT.into(),
                    what: format!("{v} is not a power of two up to 1 MiB"),
                }),
            },
        }
    }

    /// Offsets of each tensor's data from the start of the data section.
    pub fn data_offsets(&self) -> Result<Vec<u64>, GgufWriteError> {
        let align = self.alignment()?;
        let mut offset = 0u64;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            offsets.push(offset);
            offset = offset
                .checked_add(t.size_bytes)
                .map(|e| e.div_ceil(align) * align)
                .ok_or_else(|| GgufWriteError::BadTensor {
                    tensor: t.name.clone(),
                    what: "data offset overflows".into(),
                })?;
        }
        Ok(offsets)
    }

    /// Writes the file to `path`. `fill(index, spec, out)` must write exactly
    /// `spec.size_bytes` bytes of tensor `index`'s data.
    pub fn write<F>(&self, path: impl AsRef<Path>, fill: F) -> Result<(), GgufWriteError>
    where
        F: FnMut(usize, &TensorSpec, &mut dyn Write) -> io::Result<()>,
    {
        let path = path.as_ref();
        let io_err = |source| GgufWriteError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::create(path).map_err(io_err)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        self.write_to(path, &mut out, fill)?;
        let file = out.into_inner().map_err(|e| io_err(e.into_error()))?;
        file.sync_all().map_err(io_err)
    }

    /// Writes the file into memory (tests and fuzz seeds).
    pub fn to_bytes<F>(&self, fill: F) -> Result<Vec<u8>, GgufWriteError>
    where
        F: FnMut(usize, &TensorSpec, &mut dyn Write) -> io::Result<()>,
    {
        let mut bytes = Vec::new();
        self.write_to(Path::new("<memory>"), &mut bytes, fill)?;
        Ok(bytes)
    }

    /// Writes the file to any stream; `path` only names it in errors.
    pub fn write_to<F>(
        &self,
        path: &Path,
        out: &mut dyn Write,
        mut fill: F,
    ) -> Result<(), GgufWriteError>
    where
        F: FnMut(usize, &TensorSpec, &mut dyn Write) -> io::Result<()>,
    {
        let io_err = |source| GgufWriteError::Io {
            path: path.to_path_buf(),
            source,
        };
        for (key, value) in &self.metadata {
            check_value(key, value, 0)?;
        }
        let align = self.alignment()?;
        let offsets = self.data_offsets()?;
        let mut out = Counting {
            inner: out,
            written: 0,
        };

        let mut head = Vec::new();
        head.extend_from_slice(&GGUF_MAGIC);
        head.extend_from_slice(&WRITE_VERSION.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        out.write_all(&head).map_err(io_err)?;
        for (key, value) in &self.metadata {
            let mut buf = Vec::new();
            put_str(&mut buf, key);
            buf.extend_from_slice(&value.type_id().to_le_bytes());
            put_value(&mut buf, value);
            out.write_all(&buf).map_err(io_err)?;
        }
        for (t, offset) in self.tensors.iter().zip(&offsets) {
            let mut buf = Vec::new();
            put_str(&mut buf, &t.name);
            buf.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                buf.extend_from_slice(&d.to_le_bytes());
            }
            buf.extend_from_slice(&t.dtype.id().to_le_bytes());
            buf.extend_from_slice(&offset.to_le_bytes());
            out.write_all(&buf).map_err(io_err)?;
        }
        pad(&mut out, align).map_err(io_err)?;

        for (i, t) in self.tensors.iter().enumerate() {
            let before = out.written;
            fill(i, t, &mut out).map_err(io_err)?;
            let written = out.written - before;
            if written != t.size_bytes {
                return Err(GgufWriteError::WrongSize {
                    path: path.to_path_buf(),
                    tensor: t.name.clone(),
                    expected: t.size_bytes,
                    written,
                });
            }
            pad(&mut out, align).map_err(io_err)?;
        }
        out.flush().map_err(io_err)
    }

    /// Writes a split model as llama.cpp's gguf-split does: shards
    /// `PREFIX-00001-of-0000N.gguf`, each with `split.no`, `split.count` and
    /// `split.tensors.count`; shard 0 carries all other metadata. `fill` gets
    /// the tensor's index in this writer. Returns the shard paths.
    pub fn write_split<F>(
        &self,
        prefix: impl AsRef<Path>,
        limits: SplitLimits,
        mut fill: F,
    ) -> Result<Vec<PathBuf>, GgufWriteError>
    where
        F: FnMut(usize, &TensorSpec, &mut dyn Write) -> io::Result<()>,
    {
        let groups = self.plan_split(limits)?;
        let count = u16::try_from(groups.len()).map_err(|_| GgufWriteError::BadSplit {
            what: format!("{} shards (at most 65535)", groups.len()),
        })?;
        let n_tensors =
            i32::try_from(self.tensors.len()).map_err(|_| GgufWriteError::BadSplit {
                what: format!("{} tensors is too many", self.tensors.len()),
            })?;
        let mut paths = Vec::with_capacity(groups.len());
        for (no, group) in groups.iter().enumerate() {
            let mut shard = GgufWriter::new();
            if no == 0 {
                shard.metadata = self.metadata.clone();
            } else if let Some(a) = self.metadata.iter().find(|(k, _)| k == KEY_ALIGNMENT) {
                shard.metadata.push(a.clone());
            }
            shard.add_metadata(KEY_SPLIT_NO, MetaValue::U16(no as u16));
            shard.add_metadata(KEY_SPLIT_COUNT, MetaValue::U16(count));
            shard.add_metadata(KEY_SPLIT_TENSORS_COUNT, MetaValue::I32(n_tensors));
            shard.tensors = group.iter().map(|&i| self.tensors[i].clone()).collect();
            let path = shard_path(prefix.as_ref(), no, groups.len());
            shard.write(&path, |local, spec, out| fill(group[local], spec, out))?;
            paths.push(path);
        }
        Ok(paths)
    }

    /// Which tensors go to which shard.
    fn plan_split(&self, limits: SplitLimits) -> Result<Vec<Vec<usize>>, GgufWriteError> {
        if limits.max_tensors == Some(0) || limits.max_bytes == Some(0) {
            return Err(GgufWriteError::BadSplit {
                what: "shard limits must be above zero".into(),
            });
        }
        let mut groups: Vec<Vec<usize>> = vec![Vec::new()];
        let mut bytes = 0u64;
        for (i, t) in self.tensors.iter().enumerate() {
            let current = groups.len() - 1;
            let full_count = limits
                .max_tensors
                .is_some_and(|m| groups[current].len() >= m);
            let full_bytes = limits
                .max_bytes
                .is_some_and(|m| bytes.saturating_add(t.size_bytes) > m);
            if !groups[current].is_empty() && (full_count || full_bytes) {
                groups.push(Vec::new());
                bytes = 0;
            }
            bytes = bytes.saturating_add(t.size_bytes);
            if let Some(g) = groups.last_mut() {
                g.push(i);
            }
        }
        Ok(groups)
    }
}

/// Rejects values the reader would refuse: mixed-type arrays, arrays nested
/// deeper than one level inside another, strings and arrays past the
/// reader's limits.
fn check_value(key: &str, value: &MetaValue, depth: u32) -> Result<(), GgufWriteError> {
    let bad = |what: String| GgufWriteError::BadMetadata {
        key: key.to_string(),
        what,
    };
    if depth == 0 && key.len() as u64 > MAX_STRING_BYTES {
        return Err(bad(format!(
            "key of {} bytes is over the limit of {MAX_STRING_BYTES}",
            key.len()
        )));
    }
    if let MetaValue::String(s) = value {
        if s.len() as u64 > MAX_STRING_BYTES {
            return Err(bad(format!(
                "string of {} bytes is over the limit of {MAX_STRING_BYTES}",
                s.len()
            )));
        }
    }
    let MetaValue::Array(items) = value else {
        return Ok(());
    };
    if items.len() as u64 > MAX_ARRAY_ELEMS {
        return Err(bad(format!(
            "array of {} elements is over the limit of {MAX_ARRAY_ELEMS}",
            items.len()
        )));
    }
    if depth >= 2 {
        return Err(bad("arrays nested more than two deep".into()));
    }
    if let Some(first) = items.first() {
        if let Some(other) = items.iter().find(|v| v.type_id() != first.type_id()) {
            return Err(bad(format!(
                "array mixes value types {} and {}",
                first.type_id(),
                other.type_id()
            )));
        }
    }
    items
        .iter()
        .try_for_each(|v| check_value(key, v, depth + 1))
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_value(buf: &mut Vec<u8>, value: &MetaValue) {
    match value {
        MetaValue::U8(v) => buf.push(*v),
        MetaValue::I8(v) => buf.extend_from_slice(&v.to_le_bytes()),
        MetaValue::U16(v) => buf.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I16(v) => buf.extend_from_slice(&v.to_le_bytes()),
        MetaValue::U32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        MetaValue::U64(v) => buf.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I64(v) => buf.extend_from_slice(&v.to_le_bytes()),
        MetaValue::F32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        MetaValue::F64(v) => buf.extend_from_slice(&v.to_le_bytes()),
        MetaValue::Bool(v) => buf.push(u8::from(*v)),
        MetaValue::String(s) => put_str(buf, s),
        MetaValue::Array(items) => {
            // An empty array has no element to type it; u8 is as good as any.
            let elem_type = items.first().map_or(0, MetaValue::type_id);
            buf.extend_from_slice(&elem_type.to_le_bytes());
            buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(buf, item);
            }
        }
    }
}

fn pad(out: &mut Counting<'_>, align: u64) -> io::Result<()> {
    let n = out.written.div_ceil(align) * align - out.written;
    out.write_all(&vec![0u8; n as usize])
}

/// Counts bytes so each tensor callback can be checked and padding computed.
struct Counting<'a> {
    inner: &'a mut dyn Write,
    written: u64,
}

impl Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
