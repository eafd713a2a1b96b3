//! Which type each tensor gets: one type for all, or llama.cpp's mixes
//! (`llama_tensor_get_type` in src/llama-quant.cpp).

use crate::quant::GgmlType;

/// A quantization scheme: one type, or llama.cpp's mixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantScheme {
    Uniform(GgmlType),
    /// Q4_K, with Q6_K for the output head and for attn_v / ffn_down (and
    /// ffn_down_exps) of the layers llama.cpp gives more bits.
    Q4KM,
    /// Q5_K, same rule.
    Q5KM,
    /// llama.cpp's MXFP4_MOE: expert tensors MXFP4, every other matrix Q8_0.
    Mxfp4Moe,
}

impl QuantScheme {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "Q4_K_M" => Some(Self::Q4KM),
            "Q5_K_M" => Some(Self::Q5KM),
            "Q4_K_S" => Some(Self::Uniform(GgmlType::Q4K)),
            "Q5_K_S" => Some(Self::Uniform(GgmlType::Q5K)),
            "MXFP4" | "MXFP4_MOE" => Some(Self::Mxfp4Moe),
            other => GgmlType::from_name(other)
                .filter(|t| !matches!(t, GgmlType::Q8_1 | GgmlType::Q8K))
                .map(Self::Uniform),
        }
    }

    /// `general.file_type` as llama.cpp numbers it (`llama_ftype`).
    pub(super) fn file_type(self) -> u32 {
        match self {
            Self::Q4KM => 15,
            Self::Q5KM => 17,
            Self::Mxfp4Moe => 38,
            Self::Uniform(t) => match t {
                GgmlType::F32 => 0,
                GgmlType::F16 => 1,
                GgmlType::Q4_0 => 2,
                GgmlType::Q4_1 => 3,
                GgmlType::Q8_0 => 7,
                GgmlType::Q5_0 => 8,
                GgmlType::Q5_1 => 9,
                GgmlType::Q2K => 10,
                GgmlType::Q3K => 12,
                GgmlType::Q4K => 14,
                GgmlType::Q5K => 16,
                GgmlType::Q6K => 18,
                GgmlType::BF16 => 32,
                // Activation types, and MXFP4, which llama.cpp only has for
                // experts (Mxfp4Moe).
                GgmlType::Q8_1 | GgmlType::Q8K | GgmlType::MXFP4 => 0,
            },
        }
    }

    /// The type of a weight matrix: `role` is the GGUF tensor name's middle
    /// part (`attn_v`, `ffn_down_exps`, `output`, ...), `layer` its block.
    pub(super) fn weight_type(self, role: &str, layer: Option<usize>, n_layers: usize) -> GgmlType {
        let more_bits =
            |il: usize| il < n_layers / 8 || il >= 7 * n_layers / 8 || (il - n_layers / 8) % 3 == 2;
        match self {
            Self::Uniform(t) => t,
            Self::Mxfp4Moe => match role {
                "ffn_gate_exps" | "ffn_up_exps" | "ffn_down_exps" => GgmlType::MXFP4,
                _ => GgmlType::Q8_0,
            },
            Self::Q4KM | Self::Q5KM => {
                let base = if self == Self::Q4KM {
                    GgmlType::Q4K
                } else {
                    GgmlType::Q5K
                };
                match (role, layer) {
                    ("output", _) => GgmlType::Q6K,
                    ("attn_v" | "ffn_down" | "ffn_down_exps", Some(il)) if more_bits(il) => {
                        GgmlType::Q6K
                    }
                    _ => base,
                }
            }
        }
    }
}

/// llama.cpp's fallback when a row is not a whole number of blocks.
pub(super) fn fit_row(t: GgmlType, row_len: usize) -> GgmlType {
    if row_len % t.block_elems() == 0 {
        return t;
    }
    match t {
        GgmlType::Q2K | GgmlType::Q3K => GgmlType::Q4_0,
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q5K => GgmlType::Q5_1,
        _ => GgmlType::Q8_0,
    }
}
