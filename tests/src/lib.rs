//! Shared helpers for the end-to-end tests: where the real models and the
//! llama.cpp references are, and small synthetic models.
use std::path::{Path, PathBuf};

use strata_model::arch::Architecture;
use strata_model::synth::{QuantScheme, SynthSpec};
use strata_model::GgufFile;

pub mod deviation;
pub mod llama_reference;

/// The model cache `scripts/fetch-models.sh` fills.
pub fn models_dir() -> PathBuf {
    if let Ok(d) = std::env::var("STRATA_MODELS") {
        return PathBuf::from(d);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/strata/models")
}

/// A real test model; panics with the fix when it has not been fetched.
pub fn model_path(file: &str) -> PathBuf {
    let p = models_dir().join(file);
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-models.sh",
        p.display()
    );
    p
}

pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";

/// `tests/data/` (llama.cpp's recorded
/// outputs), or `STRATA_REFERENCE`.
pub fn reference_dir() -> PathBuf {
    if let Ok(d) = std::env::var("STRATA_REFERENCE") {
        return PathBuf::from(d);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data")
}

pub fn reference(file: &str) -> serde_json::Value {
    let p = reference_dir().join(file);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `strata synth --arch ARCH --preset PRESET --quant QUANT` (seed 0),
/// written into `dir` and opened.
pub fn synth(dir: &Path, arch: Architecture, preset: &str, quant: &str) -> GgufFile {
    let path = dir.join(format!("{arch}-{preset}-{quant}.gguf"));
    let quant = QuantScheme::parse(quant).unwrap_or_else(|| panic!("no quant scheme {quant}"));
    SynthSpec::from_preset(arch, preset, quant)
        .unwrap()
        .write(&path, |_, _| {})
        .unwrap();
    GgufFile::open(&path).unwrap()
}
