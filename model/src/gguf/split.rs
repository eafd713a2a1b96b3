//! Split models as llama.cpp's gguf-split writes them: shards named
//! `PREFIX-00001-of-00003.gguf`, each carrying `split.no` (u16, from 0),
//! `split.count` (u16) and `split.tensors.count` (i32, all shards together).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::reader::GgufError;
use super::value::MetaValue;

pub const KEY_SPLIT_NO: &str = "split.no";
pub const KEY_SPLIT_COUNT: &str = "split.count";
pub const KEY_SPLIT_TENSORS_COUNT: &str = "split.tensors.count";

/// The split keys of one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitInfo {
    /// This shard's index, from 0.
    pub no: usize,
    pub count: usize,
    /// Tensors in all shards together.
    pub tensors_count: u64,
}

impl SplitInfo {
    /// Reads the split keys; `None` when the file is not part of a split
    /// model (no `split.count`).
    pub fn from_metadata(
        path: &Path,
        metadata: &BTreeMap<String, MetaValue>,
    ) -> Result<Option<Self>, GgufError> {
        let Some(count) = metadata.get(KEY_SPLIT_COUNT) else {
            return Ok(None);
        };
        let get = |key: &str, value: Option<&MetaValue>| -> Result<u64, GgufError> {
            let bad = |what: String| GgufError::BadMetadata {
                path: path.to_path_buf(),
                key: key.to_string(),
                what,
            };
            let value =
                value.ok_or_else(|| bad(format!("missing while {KEY_SPLIT_COUNT} is set")))?;
            value
                .as_u64()
                .ok_or_else(|| bad(format!("{value} is not a non-negative integer")))
        };
        let count = get(KEY_SPLIT_COUNT, Some(count))?;
        let no = get(KEY_SPLIT_NO, metadata.get(KEY_SPLIT_NO))?;
        let tensors_count = get(
            KEY_SPLIT_TENSORS_COUNT,
            metadata.get(KEY_SPLIT_TENSORS_COUNT),
        )?;
        if count == 0 || count > u16::MAX as u64 {
            return Err(GgufError::BadMetadata {
                path: path.to_path_buf(),
                key: KEY_SPLIT_COUNT.into(),
                what: format!("{count} shards (1 to {} allowed)", u16::MAX),
            });
        }
        if no >= count {
            return Err(GgufError::BadMetadata {
                path: path.to_path_buf(),
                key: KEY_SPLIT_NO.into(),
                what: format!("shard {no} of a {count}-shard model"),
            });
        }
        Ok(Some(SplitInfo {
            no: no as usize,
            count: count as usize,
            tensors_count,
        }))
    }
}

/// `PREFIX-%05d-of-%05d.gguf` for shard `no` (from 0) of `count`.
pub fn shard_path(prefix: &Path, no: usize, count: usize) -> PathBuf {
    let mut name = prefix.as_os_str().to_os_string();
    name.push(format!("-{:05}-of-{:05}.gguf", no + 1, count));
    PathBuf::from(name)
}

/// Splits a shard file name into its prefix, shard index (from 0) and count;
/// `None` when the name does not follow `PREFIX-%05d-of-%05d.gguf`.
pub fn parse_shard_path(path: &Path) -> Option<(PathBuf, usize, usize)> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".gguf")?;
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (prefix, no) = rest.rsplit_once('-')?;
    let digits = |s: &str| s.len() >= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(no) || !digits(count) || prefix.is_empty() {
        return None;
    }
    let no: usize = no.parse().ok()?;
    let count: usize = count.parse().ok()?;
    if no == 0 || no > count {
        return None;
    }
    Some((path.with_file_name(prefix), no - 1, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_round_trip() {
        let p = shard_path(Path::new("/m/llama-70b"), 1, 3);
        assert_eq!(p, Path::new("/m/llama-70b-00002-of-00003.gguf"));
        assert_eq!(
            parse_shard_path(&p),
            Some((PathBuf::from("/m/llama-70b"), 1, 3))
        );
        assert_eq!(parse_shard_path(Path::new("x-00004-of-00003.gguf")), None);
        assert_eq!(parse_shard_path(Path::new("x-00000-of-00003.gguf")), None);
        assert_eq!(parse_shard_path(Path::new("model.gguf")), None);
        assert_eq!(parse_shard_path(Path::new("x-1-of-3.gguf")), None);
    }
}
