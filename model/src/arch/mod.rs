//! Architecture hyper-parameters from GGUF metadata.
//!
//! Every value comes from the file; a missing key is an error naming the
//! key, never a guess. Only constants that llama.cpp itself hard-codes per
//! architecture (Gemma-3's sliding-window pattern and local RoPE base) are
//! filled in here, with the reason.

use crate::gguf::GgufFile;

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
}

impl Architecture {
    pub const ALL: [Architecture; 7] = [
        Self::Llama,
        Self::Qwen2,
        Self::Qwen3,
        Self::Gemma3,
        Self::Qwen3Moe,
        Self::GptOss,
        Self::Mistral3,
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
        }
    }
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Gated feed-forward activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU, tanh approximation (Gemma).
    GeluTanh,
}

/// How RoPE pairs dimensions: `Normal` rotates adjacent pairs (Llama GGUFs,
/// whose Q/K rows the converter permuted), `Neox` rotates halves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    Normal,
    Neox,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RopeParams {
    pub style: RopeStyle,
    /// Dimensions rotated per head (the rest pass through).
    pub dims: usize,
    pub freq_base: f32,
    /// Base for sliding-window layers, where it differs (Gemma-3).
    pub freq_base_swa: f32,
    /// Linear position scaling: positions are multiplied by this.
    pub freq_scale: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HyperParams {
    pub arch: Architecture,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// Per-head dimension of queries and keys.
    pub head_dim: usize,
    /// Per-head dimension of values.
    pub head_dim_v: usize,
    pub d_ff: usize,
    pub vocab_size: usize,
    /// Context the model was trained for.
    pub context_length: usize,
    pub rms_eps: f32,
    pub rope: RopeParams,
    pub activation: Activation,
    /// Multiplier applied to token embeddings (Gemma: sqrt(d_model)).
    pub embedding_scale: Option<f32>,
    /// Multiplier of Q·K before softmax.
    pub attention_scale: f32,
    /// Sliding-window size of the layers that use one.
    pub sliding_window: Option<usize>,
    /// Every `swa_period`-th layer is global, the others sliding (Gemma-3: 6).
    pub swa_period: usize,
    pub qkv_bias: bool,
    pub qk_norm: bool,
    /// Gemma-3 norms after attention and after the feed-forward.
    pub post_norms: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    #[error("{path}: no general.architecture in metadata")]
    NoArchitecture { path: String },
    #[error("{path}: unsupported architecture {arch:?} (supported: llama, mistral, qwen2, qwen3, gemma3)")]
    Unsupported { path: String, arch: String },
    #[error("{path}: missing or invalid metadata key {key:?}")]
    MissingKey { path: String, key: String },
    #[error("{path}: {what}")]
    Invalid { path: String, what: String },
}

impl HyperParams {
    pub fn from_gguf(f: &GgufFile) -> Result<Self, ArchError> {
        let path = f.path().display().to_string();
        let arch_name = f
            .architecture()
            .ok_or_else(|| ArchError::NoArchitecture { path: path.clone() })?;
        let arch = Architecture::from_name(arch_name).ok_or_else(|| ArchError::Unsupported {
            path: path.clone(),
            arch: arch_name.to_string(),
        })?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let missing = |k: String| ArchError::MissingKey {
            path: path.clone(),
            key: k,
        };
        let req_usize = |k: &str| -> Result<usize, ArchError> {
            let k = key(k);
            f.get_u64(&k)
                .and_then(|v| usize::try_from(v).ok())
                .filter(|&v| v > 0)
                .ok_or_else(|| missing(k))
        };
        let opt_usize = |k: &str| f.get_u64(&key(k)).and_then(|v| usize::try_from(v).ok());
        let opt_f32 = |k: &str| f.get_f64(&key(k)).map(|v| v as f32);

        let n_layers = req_usize("block_count")?;
        let d_model = req_usize("embedding_length")?;
        let n_heads = req_usize("attention.head_count")?;
        let n_kv_heads = opt_usize("attention.head_count_kv").unwrap_or(n_heads);
        let d_ff = req_usize("feed_forward_length")?;
        let context_length = req_usize("context_length")?;
        let head_dim = opt_usize("attention.key_length").unwrap_or(d_model / n_heads);
        let head_dim_v = opt_usize("attention.value_length").unwrap_or(head_dim);
        let rms_eps = opt_f32("attention.layer_norm_rms_epsilon")
            .ok_or_else(|| missing(key("attention.layer_norm_rms_epsilon")))?;
        let vocab_size = match opt_usize("vocab_size") {
            Some(v) => v,
            None => f
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(|a| a.len())
                .or_else(|| {
                    f.tensor("token_embd.weight")
                        .and_then(|t| usize::try_from(t.n_rows()).ok())
                })
                .ok_or_else(|| missing(key("vocab_size")))?,
        };
        if n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(ArchError::Invalid {
                path,
                what: format!(
                    "{n_heads} attention heads are not a multiple of {n_kv_heads} KV heads"
                ),
            });
        }
        let rope_dims = opt_usize("rope.dimension_count").unwrap_or(head_dim);
        if rope_dims > head_dim || rope_dims % 2 != 0 {
            return Err(ArchError::Invalid {
                path,
                what: format!("rope dimension {rope_dims} vs head dim {head_dim}"),
            });
        }
        let freq_base = opt_f32("rope.freq_base").unwrap_or(10_000.0);
        let freq_scale = match f.get_str(&key("rope.scaling.type")) {
            None | Some("none") => 1.0,
            Some("linear") => {
                let factor = opt_f32("rope.scaling.factor")
                    .ok_or_else(|| missing(key("rope.scaling.factor")))?;
                if !(factor > 0.0) {
                    return Err(ArchError::Invalid {
                        path,
                        what: format!("rope scaling factor {factor}"),
                    });
                }
                1.0 / factor
            }
            // llama3-style scaling comes as the rope_freqs tensor, not here.
            Some("llama3") => 1.0,
            Some(other) => {
                return Err(ArchError::Invalid {
                    path,
                    what: format!("unsupported rope scaling type {other:?}"),
                })
            }
        };

        let mut hp = HyperParams {
            arch,
            n_layers,
            d_model,
            n_heads,
            n_kv_heads,
            head_dim,
            head_dim_v,
            d_ff,
            vocab_size,
            context_length,
            rms_eps,
            rope: RopeParams {
                style: RopeStyle::Normal,
                dims: rope_dims,
                freq_base,
                freq_base_swa: freq_base,
                freq_scale,
            },
            activation: Activation::Silu,
            embedding_scale: None,
            attention_scale: 1.0 / (head_dim as f32).sqrt(),
            sliding_window: opt_usize("attention.sliding_window").filter(|&w| w > 0),
            swa_period: 0,
            qkv_bias: false,
            qk_norm: false,
            post_norms: false,
        };
        match arch {
            Architecture::Llama => {
                // Mistral-style GGUFs may name a window; llama.cpp's llama graph ignores it.
                hp.sliding_window = None;
            }
            Architecture::Qwen2 => {
                hp.rope.style = RopeStyle::Neox;
                hp.qkv_bias = true;
                hp.sliding_window = None;
            }
            Architecture::Qwen3 => {
                hp.rope.style = RopeStyle::Neox;
                hp.qk_norm = true;
                hp.sliding_window = None;
            }
            Architecture::Gemma3 => {
                hp.rope.style = RopeStyle::Neox;
                hp.qk_norm = true;
                hp.post_norms = true;
                hp.activation = Activation::GeluTanh;
                hp.embedding_scale = Some((d_model as f32).sqrt());
                // llama.cpp hard-codes these for gemma3: five sliding layers
                // per global one, local RoPE base 10000.
                hp.swa_period = 6;
                hp.rope.freq_base_swa = opt_f32("rope.freq_base_swa").unwrap_or(10_000.0);
            }
            Architecture::Qwen3Moe | Architecture::GptOss | Architecture::Mistral3 => {
                return Err(ArchError::Unsupported {
                    path,
                    arch: arch_name.to_string(),
                })
            }
        }
        hp.check_bounds()
            .map_err(|what| ArchError::Invalid { path, what })?;
        Ok(hp)
    }

    /// Every size a file states is checked before anything is sized by it
    /// (a 200-byte GGUF claiming 2^60 layers must be an error, not an
    /// abort), and the products the code forms must fit.
    fn check_bounds(&self) -> Result<(), String> {
        const LIMITS: [(&str, usize); 8] = [
            ("block_count", 4096),
            ("embedding_length", 1 << 20),
            ("attention.head_count", 1 << 14),
            ("attention.key_length / value_length", 1 << 14),
            ("feed_forward_length", 1 << 24),
            ("vocab_size", 1 << 24),
            ("context_length", 1 << 30),
            ("attention.sliding_window", 1 << 30),
        ];
        let values = [
            self.n_layers,
            self.d_model,
            self.n_heads.max(self.n_kv_heads),
            self.head_dim.max(self.head_dim_v),
            self.d_ff,
            self.vocab_size,
            self.context_length,
            self.sliding_window.unwrap_or(0),
        ];
        for ((name, max), v) in LIMITS.iter().zip(values) {
            if v > *max {
                return Err(format!("{name} {v} is past the supported {max}"));
            }
        }
        // The products the kernels size rows and matrices by must not
        // overflow.
        let products = [
            self.n_heads.checked_mul(self.head_dim),
            self.n_kv_heads.checked_mul(self.head_dim_v),
            self.d_model.checked_mul(self.vocab_size),
            self.d_model.checked_mul(self.d_ff),
        ];
        if products.iter().any(|p| p.is_none_or(|n| n > 1 << 40)) {
            return Err("hyper-parameters whose products overflow".into());
        }
        Ok(())
    }

    /// Whether layer `il` uses the sliding window.
    pub fn is_sliding(&self, il: usize) -> bool {
        self.sliding_window.is_some() && self.swa_period > 0 && (il + 1) % self.swa_period != 0
    }

    /// Whether the attention scale multiplies Q (before it is rounded to
    /// f16 for the scores) rather than the scores: llama.cpp's Gemma graph
    /// does, and the CPU backend follows it to keep its rounding.
    pub fn scales_query(&self) -> bool {
        self.arch == Architecture::Gemma3
    }

    /// RoPE base of layer `il`.
    pub fn rope_base(&self, il: usize) -> f32 {
        if self.is_sliding(il) {
            self.rope.freq_base_swa
        } else {
            self.rope.freq_base
        }
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn k_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
    pub fn v_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim_v
    }
}

/// Tensor names of one layer, as GGUF spells them.
pub fn layer_tensor(il: usize, name: &str) -> String {
    format!("blk.{il}.{name}")
}
