//! Writes a seed corpus for the `gguf_model` target:
//! `cargo run --bin model_seeds -- corpus/gguf_model [model.gguf ...]`.
//!
//! Each seed is small: the metadata of a synthetic model of every
//! architecture (`synth` tiny presets, with their byte-level BPE tokenizer),
//! and of each real model named (default: `~/.cache/strata/models/*.gguf`)
//! with its arrays cut to 512 entries; tensors keep their names (the
//! memory profile reads them) with one F32 element each.
use std::path::{Path, PathBuf};

use strata_model::arch::Architecture;
use strata_model::gguf::{GgufWriter, MetaValue};
use strata_model::synth::{presets, QuantScheme, SynthSpec};
use strata_model::{GgmlType, GgufFile};

const MAX_ARRAY: usize = 512;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "corpus/gguf_model".into()));
    let mut models: Vec<PathBuf> = args.map(PathBuf::from).collect();
    if models.is_empty() {
        if let Some(home) = std::env::var_os("HOME") {
            let cache = Path::new(&home).join(".cache/strata/models");
            if let Ok(rd) = std::fs::read_dir(cache) {
                models.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "gguf")));
            }
        }
    }
    std::fs::create_dir_all(&dir)?;
    let mut n = 0;
    let mut save = |name: &str, w: &GgufWriter| -> Result<(), Box<dyn std::error::Error>> {
        let bytes = w.to_bytes(|_, spec, out| out.write_all(&vec![0u8; spec.size_bytes as usize]))?;
        std::fs::write(dir.join(format!("{name}.gguf")), bytes)?;
        n += 1;
        Ok(())
    };

    for arch in [Architecture::Llama, Architecture::Qwen2, Architecture::Qwen3, Architecture::Gemma3] {
        let spec = SynthSpec::from_preset(arch, presets(arch)[0], QuantScheme::Uniform(GgmlType::Q8_0))?;
        let full = spec.writer()?;
        let meta = full.metadata().iter().map(|(k, v)| (k.clone(), v.clone()));
        let names = full.tensors().iter().map(|t| t.name.clone());
        save(&format!("synth-{}", arch.name()), &small(meta, names)?)?;
    }
    for path in &models {
        let f = GgufFile::open(path)?;
        let meta = f.metadata.iter().map(|(k, v)| (k.clone(), cut(v)));
        let names = f.tensors.iter().map(|t| t.name.clone());
        let stem = path.file_stem().map_or("model".into(), |s| s.to_string_lossy().into_owned());
        save(&format!("real-{stem}"), &small(meta, names)?)?;
    }
    println!("wrote {n} seeds to {}", dir.display());
    Ok(())
}

fn small(
    meta: impl Iterator<Item = (String, MetaValue)>,
    tensors: impl Iterator<Item = String>,
) -> Result<GgufWriter, Box<dyn std::error::Error>> {
    let mut w = GgufWriter::new();
    for (k, v) in meta {
        w.add_metadata(k, v);
    }
    for name in tensors {
        w.add_tensor(name, &[1], GgmlType::F32)?;
    }
    Ok(w)
}

fn cut(v: &MetaValue) -> MetaValue {
    match v {
        MetaValue::Array(items) => MetaValue::Array(items.iter().take(MAX_ARRAY).cloned().collect()),
        other => other.clone(),
    }
}
