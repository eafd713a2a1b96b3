//! Where the integration tests find their files.
#![allow(dead_code)]
use std::path::PathBuf;

/// The model cache `scripts/fetch-models.sh` fills: `$STRATA_MODELS`, else
/// `~/.cache/strata/models`.
pub fn models_dir() -> PathBuf {
    std::env::var("STRATA_MODELS")
        .map(Into::into)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/strata/models")
        })
}

/// llama.cpp's recorded outputs: `$STRATA_REFERENCE`, else `tests/data`.
pub fn reference_dir() -> PathBuf {
    std::env::var("STRATA_REFERENCE")
        .map(Into::into)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data"))
}

/// A file from the model cache; a missing one fails the test and says how to fetch it.
pub fn model_file(name: &str) -> PathBuf {
    let path = models_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-models.sh (or set STRATA_MODELS)",
        path.display()
    );
    path
}
