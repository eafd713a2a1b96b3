//! Real models through the writer: every key, value and tensor byte survives
//! a rewrite, whole and split into shards.
use std::path::PathBuf;

use strata_model::gguf::{GgufFile, GgufWriter, SplitLimits};

fn models_dir() -> PathBuf {
    std::env::var("STRATA_MODELS")
        .map(Into::into)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/strata/models")
        })
}

/// A writer holding `f`'s metadata and tensor specs (split keys left out).
fn writer_for(f: &GgufFile) -> GgufWriter {
    let mut w = GgufWriter::new();
    for (k, v) in &f.metadata {
        if !k.starts_with("split.") {
            w.add_metadata(k.clone(), v.clone());
        }
    }
    for t in &f.tensors {
        w.add_tensor(t.name.clone(), &t.dims, t.dtype).unwrap();
    }
    w
}

fn same_model(a: &GgufFile, b: &GgufFile) {
    for (k, v) in &a.metadata {
        if !k.starts_with("split.") {
            assert_eq!(b.get(k), Some(v), "{k}");
        }
    }
    assert_eq!(a.tensors.len(), b.tensors.len());
    for (ta, tb) in a.tensors.iter().zip(&b.tensors) {
        assert_eq!(
            (&ta.name, &ta.dims, ta.dtype),
            (&tb.name, &tb.dims, tb.dtype)
        );
        assert!(
            a.tensor_data(ta) == b.tensor_data(tb),
            "{} data differs",
            ta.name
        );
    }
}

#[test]
fn rewrite_smollm2_whole_and_split() {
    rewrite_whole_and_split("SmolLM2-135M-Instruct.Q4_1.gguf");
}

#[test]
fn rewrite_gemma3_whole_and_split() {
    rewrite_whole_and_split("gemma-3-270m-q4_k_m.gguf");
}

fn rewrite_whole_and_split(model: &str) {
    let src = models_dir().join(model);
    if !src.exists() {
        eprintln!("skipping: {} not found", src.display());
        return;
    }
    let f = GgufFile::open(&src).unwrap();
    let dir = std::env::temp_dir().join(format!("strata-gguf-real-{model}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let w = writer_for(&f);
    let copy_data = |i: usize, _: &strata_model::gguf::TensorSpec, out: &mut dyn std::io::Write| {
        out.write_all(f.tensor_data(&f.tensors[i]))
    };

    let whole = dir.join("whole.gguf");
    w.write(&whole, copy_data).unwrap();
    same_model(&f, &GgufFile::open(&whole).unwrap());
    std::fs::remove_file(&whole).unwrap();

    let limits = SplitLimits {
        max_tensors: None,
        max_bytes: Some(30 << 20),
    };
    let paths = w.write_split(dir.join("smol"), limits, copy_data).unwrap();
    assert!(paths.len() >= 3, "{} shards", paths.len());
    let split = GgufFile::open(&paths[paths.len() - 1]).unwrap();
    assert_eq!(split.shard_paths().len(), paths.len());
    same_model(&f, &split);
    std::fs::remove_dir_all(&dir).unwrap();
}
