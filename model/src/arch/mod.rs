//! Architectures: each one is a file that turns GGUF metadata into a
//! [`ModelSpec`] of per-layer specs (`spec.rs`), reading the shared keys
//! through `meta.rs`.
//!
//! Every value comes from the file; a missing key is an error naming the
//! key, never a guess. Only constants that llama.cpp itself hard-codes per
//! architecture are filled in, in that architecture's file, with the reason.

mod gemma3;
mod gemma4;
mod gpt_oss;
mod llama;
mod meta;
mod mistral3;
mod qwen2;
mod qwen3;
mod qwen35;
mod qwen3moe;
mod spec;

pub use spec::*;

use crate::gguf::GgufFile;
use meta::Meta;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3, Mistral, SmolLM.
    Llama,
    Qwen2,
    /// Qwen2 without QKV bias, with per-head Q/K RMSNorm.
    Qwen3,
    Gemma3,
    /// Qwen3 attention with a mixture-of-experts feed-forward (Qwen3-30B-A3B).
    Qwen3Moe,
    /// gpt-oss: attention sinks and biases, alternating sliding window,
    /// experts with biases and a clamped SwiGLU, MXFP4 experts.
    GptOss,
    /// Ministral-3 (dense).
    Mistral3,
    /// Qwen3.5 / Qwen3.6 dense (27B): three gated-DeltaNet layers per gated
    /// full-attention layer.
    Qwen35,
    /// Qwen3.5 / Qwen3.6 MoE (35B-A3B): the same mixers, routed experts plus
    /// a sigmoid-gated shared expert.
    Qwen35Moe,
    /// Gemma 4 (31B, 26B-A4B): sliding and global layers of different head
    /// shapes, V norm, final softcap; the 26B adds experts beside the MLP.
    Gemma4,
}

impl Architecture {
    pub const ALL: [Architecture; 10] = [
        Self::Llama,
        Self::Qwen2,
        Self::Qwen3,
        Self::Gemma3,
        Self::Qwen3Moe,
        Self::GptOss,
        Self::Mistral3,
        Self::Qwen35,
        Self::Qwen35Moe,
        Self::Gemma4,
    ];

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "llama" | "mistral" => Self::Llama,
            "qwen2" => Self::Qwen2,
            "qwen3" => Self::Qwen3,
            "gemma3" => Self::Gemma3,
            "qwen3moe" => Self::Qwen3Moe,
            "gpt-oss" => Self::GptOss,
            "mistral3" => Self::Mistral3,
            "qwen35" => Self::Qwen35,
            "qwen35moe" => Self::Qwen35Moe,
            "gemma4" => Self::Gemma4,
            _ => return None,
        })
    }

    /// The `general.architecture` value and metadata key prefix.
    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Gemma3 => "gemma3",
            Self::Qwen3Moe => "qwen3moe",
            Self::GptOss => "gpt-oss",
            Self::Mistral3 => "mistral3",
            Self::Qwen35 => "qwen35",
            Self::Qwen35Moe => "qwen35moe",
            Self::Gemma4 => "gemma4",
        }
    }
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    #[error("{path}: no general.architecture in metadata")]
    NoArchitecture { path: String },
    #[error("{path}: unsupported architecture {arch:?} (supported: llama, mistral, qwen2, qwen3, gemma3, qwen3moe, gpt-oss, mistral3, qwen35, qwen35moe, gemma4)")]
    Unsupported { path: String, arch: String },
    #[error("{path}: missing or invalid metadata key {key:?}")]
    MissingKey { path: String, key: String },
    #[error("{path}: {what}")]
    Invalid { path: String, what: String },
}

impl ModelSpec {
    pub fn from_gguf(f: &GgufFile) -> Result<Self, ArchError> {
        let path = f.path().display().to_string();
        let arch_name = f
            .architecture()
            .ok_or_else(|| ArchError::NoArchitecture { path: path.clone() })?;
        let arch = Architecture::from_name(arch_name).ok_or_else(|| ArchError::Unsupported {
            path: path.clone(),
            arch: arch_name.to_string(),
        })?;
        let m = Meta {
            file: f,
            prefix: arch_name,
            path,
        };
        let spec = match arch {
            Architecture::Llama => llama::spec(&m)?,
            Architecture::Qwen2 => qwen2::spec(&m)?,
            Architecture::Qwen3 => qwen3::spec(&m)?,
            Architecture::Gemma3 => gemma3::spec(&m)?,
            Architecture::Qwen3Moe => qwen3moe::spec(&m)?,
            Architecture::GptOss => gpt_oss::spec(&m)?,
            Architecture::Mistral3 => mistral3::spec(&m)?,
            Architecture::Qwen35 | Architecture::Qwen35Moe => qwen35::spec(&m, arch)?,
            Architecture::Gemma4 => gemma4::spec(&m)?,
        };
        spec.check_bounds().map_err(|what| m.invalid(what))?;
        Ok(spec)
    }
}

/// Most layers a file may state.
const MAX_LAYERS: usize = 4096;

/// The values every architecture reads the same way.
pub(crate) struct Globals {
    pub arch: Architecture,
    pub n_layers: usize,
    pub d_model: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rms_eps: f32,
}

impl Globals {
    /// The layer count is bounded here, before any architecture file sizes
    /// a per-layer table by it.
    fn read(m: &Meta<'_>, arch: Architecture) -> Result<Self, ArchError> {
        let n_layers = m.usize("block_count")?;
        if n_layers > MAX_LAYERS {
            return Err(m.invalid(format!(
                "block_count {n_layers} is past the supported {MAX_LAYERS}"
            )));
        }
        Ok(Globals {
            arch,
            n_layers,
            d_model: m.usize("embedding_length")?,
            vocab_size: m.vocab_size()?,
            context_length: m.usize("context_length")?,
            rms_eps: m.f32("attention.layer_norm_rms_epsilon")?,
        })
    }

    /// A model of these globals whose layer `il` is `layer(il)`.
    fn model(self, layer: impl FnMut(usize) -> LayerSpec) -> Result<ModelSpec, ArchError> {
        Ok(ModelSpec {
            arch: self.arch,
            n_layers: self.n_layers,
            d_model: self.d_model,
            vocab_size: self.vocab_size,
            context_length: self.context_length,
            rms_eps: self.rms_eps,
            embedding_scale: None,
            out_rows_after_attention: true,
            final_softcap: None,
            per_layer_input: None,
            layers: (0..self.n_layers).map(layer).collect(),
            mtp_layers: Vec::new(),
        })
    }
}

/// Tensor names of one layer, as GGUF spells them.
pub fn layer_tensor(il: usize, name: &str) -> String {
    format!("blk.{il}.{name}")
}

#[cfg(test)]
mod tests;
