//! What a model is, layer by layer: the spec every architecture file builds
//! from GGUF metadata, and that the worker runs and the planner sizes.
//!
//! A layer is a mixer (attention today) followed by a feed-forward (dense or
//! mixture-of-experts). Everything an architecture does differently is a
//! field here, so the worker's blocks never ask which architecture they run.

use super::Architecture;

#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub arch: Architecture,
    pub n_layers: usize,
    pub d_model: usize,
    pub vocab_size: usize,
    /// Context the model was trained for.
    pub context_length: usize,
    pub rms_eps: f32,
    /// Multiplier applied to token embeddings (Gemma: sqrt(d_model)).
    pub embedding_scale: Option<f32>,
    /// Whether the last layer drops the rows the output head does not read
    /// right after its attention output (llama.cpp's `inp_out_ids` in most
    /// graphs) rather than after the whole layer (gpt-oss). It changes the
    /// feed-forward's batch shape, hence its rounding.
    pub out_rows_after_attention: bool,
    pub layers: Vec<LayerSpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LayerSpec {
    pub mixer: Mixer,
    pub ffn: FeedForward,
    /// Gemma-3's norms after the mixer and after the feed-forward.
    pub post_norms: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Mixer {
    Attention(AttentionSpec),
}

#[derive(Debug, Clone, PartialEq)]
pub struct AttentionSpec {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// Per-head dimension of queries and keys.
    pub head_dim: usize,
    /// Per-head dimension of values.
    pub head_dim_v: usize,
    pub rope: RopeSpec,
    /// Sliding window, for the layers that use one.
    pub window: Option<usize>,
    /// Multiplier of Q·K before softmax.
    pub scale: f32,
    /// Whether `scale` multiplies Q (before it is rounded to f16 for the
    /// scores) rather than the scores: llama.cpp's Gemma graph does, and the
    /// CPU backend follows it to keep its rounding.
    pub scale_query: bool,
    /// Per-head RMSNorm of Q and K (Qwen3, Gemma-3).
    pub qk_norm: bool,
    /// Q/K/V biases, loaded where the file has them (Qwen2, gpt-oss).
    pub qkv_bias: bool,
    /// A bias on the output projection (gpt-oss; optional for Ministral-3).
    pub out_bias: bool,
    /// One learned logit per head in the softmax denominator (gpt-oss).
    pub sinks: bool,
    /// Position-dependent scaling of Q (Llama 4 / Ministral-3 temperature tuning).
    pub temperature: Option<AttnTemperature>,
}

impl AttentionSpec {
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn k_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
    pub fn v_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim_v
    }
    /// Width of the attention output (the output projection's input).
    pub fn out_dim(&self) -> usize {
        self.n_heads * self.head_dim_v
    }
}

/// How RoPE pairs dimensions: `Normal` rotates adjacent pairs (Llama GGUFs,
/// whose Q/K rows the converter permuted), `Neox` rotates halves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    Normal,
    Neox,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RopeSpec {
    pub style: RopeStyle,
    /// Dimensions rotated per head (the rest pass through).
    pub dims: usize,
    pub freq_base: f32,
    /// Positions are multiplied by this (1 / the scaling factor).
    pub freq_scale: f32,
    pub yarn: Option<YarnSpec>,
}

/// YaRN context extension as the file states it; the kernels derive
/// llama.cpp's ext/attn factors from these (`strata_kernels::Yarn::llama_cpp`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct YarnSpec {
    /// `rope.scaling.factor`.
    pub factor: f32,
    /// The context the model was trained with before extension.
    pub n_ctx_orig: usize,
    pub beta_fast: f32,
    pub beta_slow: f32,
    /// `rope.scaling.yarn_log_multiplier` (0 when absent).
    pub log_mul: f32,
    /// `rope.scaling.attn_factor` (1 when absent).
    pub attn_factor: f32,
}

/// Q is scaled by `ln(floor(pos / floor_scale) + 1) * scale + 1`
/// (llama.cpp's `build_inp_attn_scale`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnTemperature {
    pub floor_scale: usize,
    pub scale: f32,
}

/// Gated feed-forward activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU, tanh approximation (Gemma).
    GeluTanh,
    /// gpt-oss's clamped SwiGLU (alpha 1.702, limit 7, `(up + 1)`).
    SwigluOai,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FeedForward {
    Dense(DenseSpec),
    Moe(MoeSpec),
}

#[derive(Debug, Clone, PartialEq)]
pub struct DenseSpec {
    pub d_ff: usize,
    pub activation: Activation,
}

/// How router logits become expert weights (llama.cpp's gating functions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpertGating {
    /// Softmax over all experts, then top-k (Qwen3-MoE).
    Softmax,
    /// Top-k of the logits, then softmax over the chosen (gpt-oss).
    SoftmaxWeight,
    Sigmoid,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MoeSpec {
    pub n_expert: usize,
    pub n_used: usize,
    /// Feed-forward width of one expert.
    pub d_ff_expert: usize,
    pub activation: Activation,
    pub gating: ExpertGating,
    /// Whether the chosen experts' weights are divided by their sum.
    pub norm_weights: bool,
    /// Multiplier of the weights (ignored when 0 or 1, as llama.cpp).
    pub weights_scale: f32,
    /// A bias on the router logits (gpt-oss).
    pub router_bias: bool,
    /// Biases on each expert's gate, up and down (gpt-oss).
    pub expert_bias: bool,
    /// The norm before the feed-forward is `post_attention_norm` (gpt-oss)
    /// rather than `ffn_norm`.
    pub norm_name: &'static str,
}

impl ModelSpec {
    /// The attention of layer `il`.
    pub fn attention(&self, il: usize) -> &AttentionSpec {
        match &self.layers[il].mixer {
            Mixer::Attention(a) => a,
        }
    }

    /// Whether any layer has a mixture-of-experts feed-forward.
    pub fn is_moe(&self) -> bool {
        self.layers
            .iter()
            .any(|l| matches!(l.ffn, FeedForward::Moe(_)))
    }

    /// Every size a file states is checked before anything is sized by it
    /// (a 200-byte GGUF claiming 2^60 layers must be an error, not an
    /// abort), and the products the code forms must fit.
    pub(super) fn check_bounds(&self) -> Result<(), String> {
        let check = |name: &str, v: usize, max: usize| {
            if v > max {
                Err(format!("{name} {v} is past the supported {max}"))
            } else {
                Ok(())
            }
        };
        check("block_count", self.n_layers, 4096)?;
        check("embedding_length", self.d_model, 1 << 20)?;
        check("vocab_size", self.vocab_size, 1 << 24)?;
        check("context_length", self.context_length, 1 << 30)?;
        let fits = |p: Option<usize>| p.is_some_and(|n| n <= 1 << 40);
        if !fits(self.d_model.checked_mul(self.vocab_size)) {
            return Err("hyper-parameters whose products overflow".into());
        }
        for layer in &self.layers {
            let Mixer::Attention(a) = &layer.mixer;
            check("attention.head_count", a.n_heads.max(a.n_kv_heads), 1 << 14)?;
            check(
                "attention.key_length / value_length",
                a.head_dim.max(a.head_dim_v),
                1 << 14,
            )?;
            check("attention.sliding_window", a.window.unwrap_or(0), 1 << 30)?;
            let (ff, n_expert) = match &layer.ffn {
                FeedForward::Dense(d) => (d.d_ff, 1),
                FeedForward::Moe(m) => (m.d_ff_expert, m.n_expert),
            };
            check("feed_forward_length", ff, 1 << 24)?;
            check("expert_count", n_expert, 1 << 12)?;
            let products = [
                a.n_heads.checked_mul(a.head_dim),
                a.n_heads.checked_mul(a.head_dim_v),
                a.n_kv_heads.checked_mul(a.head_dim_v),
                self.d_model
                    .checked_mul(ff)
                    .and_then(|n| n.checked_mul(n_expert)),
            ];
            if !products.into_iter().all(fits) {
                return Err("hyper-parameters whose products overflow".into());
            }
        }
        Ok(())
    }
}
