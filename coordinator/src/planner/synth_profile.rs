//! Memory profiles of synthetic shapes without writing their data: the
//! metadata is parsed from an in-memory, tensor-less GGUF and the tensor list
//! comes from the writer's specs, so the profile is exactly what
//! `MemoryProfile::from_gguf` would give for the written file.

use strata_model::arch::{ArchError, ModelSpec};
use strata_model::gguf::{GgufError, GgufWriteError, GgufWriter};
use strata_model::profile::MemoryProfile;
use strata_model::synth::{SynthError, SynthSpec};
use strata_model::{GgufFile, TensorInfo};

#[derive(Debug, thiserror::Error)]
pub enum SynthProfileError {
    #[error(transparent)]
    Synth(#[from] SynthError),
    #[error(transparent)]
    Write(#[from] GgufWriteError),
    #[error(transparent)]
    Read(#[from] GgufError),
    #[error(transparent)]
    Arch(#[from] ArchError),
}

/// Hyper-parameters and memory profile of `spec`'s model.
pub fn synth_profile(spec: &SynthSpec) -> Result<(ModelSpec, MemoryProfile), SynthProfileError> {
    let full = spec.writer()?;
    let mut meta = GgufWriter::new();
    for (k, v) in full.metadata() {
        meta.add_metadata(k.clone(), v.clone());
    }
    let bytes = meta.to_bytes(|_, _, _| Ok(()))?;
    let mut file = GgufFile::from_bytes("<synth>", &bytes)?;
    file.tensors = full
        .tensors()
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
    let hp = ModelSpec::from_gguf(&file)?;
    let profile = MemoryProfile::from_gguf(&file, &hp);
    Ok((hp, profile))
}
