//! Memory profiles of synthetic shapes without writing their data: the
//! metadata is parsed from an in-memory, tensor-less GGUF and the tensor list
//! comes from the writer's specs, so the profile is exactly what
//! `MemoryProfile::from_gguf` would give for the written file.

use strata_model::arch::{ArchError, ModelSpec};
use strata_model::gguf::GgufWriteError;
use strata_model::profile::MemoryProfile;
use strata_model::synth::{SynthError, SynthSpec};

#[derive(Debug, thiserror::Error)]
pub enum SynthProfileError {
    #[error(transparent)]
    Synth(#[from] SynthError),
    #[error(transparent)]
    Write(#[from] GgufWriteError),
    #[error(transparent)]
    Arch(#[from] ArchError),
}

/// Hyper-parameters and memory profile of `spec`'s model.
pub fn synth_profile(spec: &SynthSpec) -> Result<(ModelSpec, MemoryProfile), SynthProfileError> {
    let file = spec.writer()?.layout("<synth>")?;
    let hp = ModelSpec::from_gguf(&file)?;
    let profile = MemoryProfile::from_gguf(&file, &hp);
    Ok((hp, profile))
}
