//! Split models: written with `write_split`, opened from any shard.
use std::path::{Path, PathBuf};

use strata_model::gguf::{
    shard_path, GgufError, GgufFile, GgufWriter, MetaValue, SplitLimits, KEY_SPLIT_COUNT,
    KEY_SPLIT_NO, KEY_SPLIT_TENSORS_COUNT,
};
use strata_model::GgmlType;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("strata-gguf-split-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn model(n_tensors: usize) -> GgufWriter {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", MetaValue::String("llama".into()));
    w.add_metadata("llama.block_count", MetaValue::U32(n_tensors as u32));
    w.add_metadata(
        "tokenizer.ggml.tokens",
        MetaValue::Array(vec![MetaValue::String("a".into()); 10]),
    );
    for i in 0..n_tensors {
        w.add_tensor(
            format!("blk.{i}.weight"),
            &[32 * (i as u64 + 1), 2],
            GgmlType::Q8_0,
        )
        .unwrap();
    }
    w
}

fn fill(
    i: usize,
    spec: &strata_model::gguf::TensorSpec,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    out.write_all(&vec![i as u8; spec.size_bytes as usize])
}

fn check_model(f: &GgufFile, n_tensors: usize) {
    assert_eq!(f.architecture(), Some("llama"));
    assert_eq!(f.get_u64("llama.block_count"), Some(n_tensors as u64));
    assert_eq!(
        f.get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map(|a| a.len()),
        Some(10)
    );
    assert_eq!(f.tensors.len(), n_tensors);
    for i in 0..n_tensors {
        let t = f.tensor(&format!("blk.{i}.weight")).unwrap();
        assert_eq!(t.dims, vec![32 * (i as u64 + 1), 2]);
        assert!(f.tensor_data(t).iter().all(|&b| b == i as u8));
    }
}

#[test]
fn split_by_tensor_count_opens_from_any_shard() {
    let dir = TempDir::new("count");
    let prefix = dir.0.join("model");
    let w = model(5);
    let paths = w
        .write_split(
            &prefix,
            SplitLimits {
                max_tensors: Some(2),
                max_bytes: None,
            },
            fill,
        )
        .unwrap();
    assert_eq!(paths.len(), 3);
    assert_eq!(paths[0], dir.0.join("model-00001-of-00003.gguf"));
    for p in &paths {
        let f = GgufFile::open(p).unwrap();
        check_model(&f, 5);
        assert_eq!(
            f.shard_paths(),
            paths.iter().map(PathBuf::as_path).collect::<Vec<_>>()
        );
        let shards: Vec<usize> = f.tensors.iter().map(|t| t.shard).collect();
        assert_eq!(shards, [0, 0, 1, 1, 2]);
        assert_eq!(f.get_u64(KEY_SPLIT_COUNT), Some(3));
        assert_eq!(
            f.get_u64(KEY_SPLIT_NO),
            Some(0),
            "metadata comes from shard 0"
        );
    }
    // Later shards carry only the split keys, as gguf-split writes them.
    let bytes = std::fs::read(&paths[2]).unwrap();
    let err = GgufFile::from_bytes("shard3.gguf", &bytes).unwrap_err();
    assert!(matches!(err, GgufError::Split { .. }), "{err}");
}

#[test]
fn split_by_bytes() {
    let dir = TempDir::new("bytes");
    let prefix = dir.0.join("m");
    let w = model(6);
    // Tensor i holds 2 * (i + 1) blocks of 34 bytes: 68, 136, ..., 408.
    let limits = SplitLimits {
        max_tensors: None,
        max_bytes: Some(400),
    };
    let paths = w.write_split(&prefix, limits, fill).unwrap();
    let f = GgufFile::open(&paths[0]).unwrap();
    check_model(&f, 6);
    let shards: Vec<usize> = f.tensors.iter().map(|t| t.shard).collect();
    // 68+136 | 204 | 272 | 340 | 408 (alone, over the limit but a shard holds at least one).
    assert_eq!(shards, [0, 0, 1, 2, 3, 4]);
    assert_eq!(paths.len(), 5);
}

#[test]
fn one_shard_split_is_a_plain_file() {
    let dir = TempDir::new("one");
    let paths = model(3)
        .write_split(dir.0.join("m"), SplitLimits::default(), fill)
        .unwrap();
    assert_eq!(paths, [dir.0.join("m-00001-of-00001.gguf")]);
    check_model(&GgufFile::open(&paths[0]).unwrap(), 3);
    let bytes = std::fs::read(&paths[0]).unwrap();
    check_model(&GgufFile::from_bytes("m.gguf", &bytes).unwrap(), 3);
}

#[test]
fn from_shard_bytes_merges() {
    let dir = TempDir::new("bytes-merge");
    let paths = model(4)
        .write_split(
            dir.0.join("m"),
            SplitLimits {
                max_tensors: Some(3),
                max_bytes: None,
            },
            fill,
        )
        .unwrap();
    let data: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let parts: Vec<(&str, &[u8])> = vec![("a.gguf", &data[0]), ("b.gguf", &data[1])];
    check_model(&GgufFile::from_shard_bytes(&parts).unwrap(), 4);
    // Out of order.
    let err =
        GgufFile::from_shard_bytes(&[("b.gguf", &data[1]), ("a.gguf", &data[0])]).unwrap_err();
    assert!(
        matches!(&err, GgufError::Split { path, .. } if path == Path::new("b.gguf")),
        "{err}"
    );
}

#[test]
fn missing_shard() {
    let dir = TempDir::new("missing");
    let paths = model(5)
        .write_split(
            dir.0.join("m"),
            SplitLimits {
                max_tensors: Some(2),
                max_bytes: None,
            },
            fill,
        )
        .unwrap();
    std::fs::remove_file(&paths[1]).unwrap();
    for p in [&paths[0], &paths[2]] {
        let err = GgufFile::open(p).unwrap_err();
        assert!(
            matches!(&err, GgufError::Split { path, .. } if path == &paths[1]),
            "{err}"
        );
        let msg = err.to_string();
        assert!(msg.contains("shard 2 of 3 is missing"), "{msg}");
    }
}

/// Writes one shard by hand with the given split keys.
fn shard(path: &Path, no: u16, count: u16, tensors_count: i32, names: &[&str]) {
    let mut w = GgufWriter::new();
    w.add_metadata(KEY_SPLIT_NO, MetaValue::U16(no));
    w.add_metadata(KEY_SPLIT_COUNT, MetaValue::U16(count));
    w.add_metadata(KEY_SPLIT_TENSORS_COUNT, MetaValue::I32(tensors_count));
    for n in names {
        w.add_tensor(*n, &[32], GgmlType::F32).unwrap();
    }
    w.write(path, fill).unwrap();
}

fn open_err(path: &Path) -> String {
    let err = GgufFile::open(path).unwrap_err();
    assert!(
        matches!(
            err,
            GgufError::Split { .. } | GgufError::BadMetadata { .. } | GgufError::BadTensor { .. }
        ),
        "{err}"
    );
    err.to_string()
}

#[test]
fn inconsistent_counts() {
    let dir = TempDir::new("inconsistent");
    let p = |no, count| shard_path(&dir.0.join("m"), no, count);

    // split.tensors.count disagrees with the tensors present.
    shard(&p(0, 2), 0, 2, 5, &["a"]);
    shard(&p(1, 2), 1, 2, 5, &["b"]);
    let msg = open_err(&p(0, 2));
    assert!(
        msg.contains("split.tensors.count is 5") && msg.contains("hold 2 tensors"),
        "{msg}"
    );

    // The second shard says it is shard 1 again.
    shard(&p(0, 2), 0, 2, 2, &["a"]);
    shard(&p(1, 2), 0, 2, 2, &["b"]);
    let msg = open_err(&p(0, 2));
    assert!(
        msg.contains("expected shard 2 of 2") && msg.contains("says shard 1 of 2"),
        "{msg}"
    );

    // The second shard belongs to a 3-shard model.
    shard(&p(1, 2), 1, 3, 2, &["b"]);
    let msg = open_err(&p(0, 2));
    assert!(msg.contains("says shard 2 of 3"), "{msg}");

    // The same tensor in two shards.
    shard(&p(1, 2), 1, 2, 2, &["a"]);
    let msg = open_err(&p(0, 2));
    assert!(
        msg.contains("\"a\"") && msg.contains("appears twice"),
        "{msg}"
    );

    // Consistent again: opens.
    shard(&p(1, 2), 1, 2, 2, &["b"]);
    assert_eq!(GgufFile::open(p(1, 2)).unwrap().tensors.len(), 2);

    // File name and metadata disagree.
    std::fs::copy(p(0, 2), p(0, 3)).unwrap();
    let msg = open_err(&p(0, 3));
    assert!(msg.contains("name says shard 1 of 3"), "{msg}");

    // split.no beyond split.count.
    shard(&p(0, 2), 4, 2, 2, &["a"]);
    let msg = open_err(&p(0, 2));
    assert!(
        msg.contains("split.no") && msg.contains("shard 4 of a 2-shard model"),
        "{msg}"
    );

    // Split keys but a name that is not a shard name.
    let plain = dir.0.join("plain.gguf");
    shard(&plain, 0, 2, 2, &["a"]);
    let msg = open_err(&plain);
    assert!(
        msg.contains("does not follow PREFIX-%05d-of-%05d.gguf"),
        "{msg}"
    );

    // split.count present, split.no absent.
    let mut w = GgufWriter::new();
    w.add_metadata(KEY_SPLIT_COUNT, MetaValue::U16(2));
    w.write(&plain, fill).unwrap();
    let msg = open_err(&plain);
    assert!(msg.contains("split.no") && msg.contains("missing"), "{msg}");
}
