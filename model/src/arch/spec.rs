//! What a model is, layer by layer: the spec every architecture file builds
//! from GGUF metadata, and that the worker runs and the planner sizes.
//!
//! A layer is a mixer (attention, or Qwen3.5's gated DeltaNet) followed by a
//! feed-forward (dense or mixture-of-experts). Everything an architecture does differently is a
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
    /// `cap · tanh(logits / cap)` on the output logits (Gemma 4).
    pub final_softcap: Option<f32>,
    /// Gemma 4 E-series per-layer embeddings: each layer gets a width-`P`
    /// input made from its token (`per_layer_token_embd`) and the scaled
    /// token embedding (`per_layer_model_proj`), gated into the residual
    /// after the feed-forward. Every stage computes its own layers' inputs
    /// from the token ids frames carry.
    pub per_layer_input: Option<usize>,
    pub layers: Vec<LayerSpec>,
    /// Multi-token-prediction blocks after the trunk (Qwen3.5's `nextn`,
    /// `blk.{n_layers + i}`): the last stage loads them; the main pass
    /// never runs them (a draft model for speculative decoding would).
    pub mtp_layers: Vec<LayerSpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LayerSpec {
    pub mixer: Mixer,
    pub ffn: FeedForward,
    /// Gemma-3's norms after the mixer and after the feed-forward.
    pub post_norms: bool,
    /// The residual stream is multiplied by a learned scalar after the layer
    /// (Gemma 4's `layer_output_scale`).
    pub layer_scale: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Mixer {
    Attention(AttentionSpec),
    /// Qwen3.5's gated DeltaNet: a recurrent mixer whose per-sequence state
    /// (a short conv window and an S×S matrix per value head) replaces KV.
    DeltaNet(DeltaNetSpec),
}

/// A gated DeltaNet layer (llama.cpp's `build_layer_attn_linear`): the
/// `ssm.*` keys. Keys and queries have `n_k_heads` heads, values
/// `n_v_heads`, all of width `d_state`; value head h reads key head
/// h mod n_k_heads.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaNetSpec {
    /// `ssm.conv_kernel`: taps of the causal conv over q, k and v.
    pub d_conv: usize,
    /// `ssm.state_size`: head width of keys and values.
    pub d_state: usize,
    /// `ssm.group_count`.
    pub n_k_heads: usize,
    /// `ssm.time_step_rank`.
    pub n_v_heads: usize,
    /// `ssm.inner_size` = d_state × n_v_heads.
    pub d_inner: usize,
    /// Epsilon of the q/k L2 norms and of the per-head output norm.
    pub eps: f32,
}

impl DeltaNetSpec {
    pub fn key_dim(&self) -> usize {
        self.d_state * self.n_k_heads
    }
    /// Channels of the conv: q, k and v side by side.
    pub fn conv_dim(&self) -> usize {
        2 * self.key_dim() + self.d_inner
    }
    /// f32 values of one sequence's conv state (the last d_conv − 1 inputs).
    pub fn conv_state_len(&self) -> usize {
        (self.d_conv - 1) * self.conv_dim()
    }
    /// f32 values of one sequence's recurrent state (S×S per value head).
    pub fn ssm_state_len(&self) -> usize {
        self.d_state * self.d_inner
    }
    /// Bytes of one sequence's state in this layer (both f32, as llama.cpp's
    /// hybrid memory keeps them).
    pub fn state_bytes_per_seq(&self) -> u64 {
        4 * (self.conv_state_len() + self.ssm_state_len()) as u64
    }
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
    /// Qwen3.5's gated attention: each head's Q rows are followed by as many
    /// gate rows, and the attention output is multiplied by sigmoid(gate).
    pub output_gate: bool,
    /// A weightless per-head RMSNorm of V (Gemma 4).
    pub v_norm: bool,
    /// No V projection: V is the K projection (before K's norm and RoPE),
    /// as Gemma 4's global layers have it.
    pub v_from_k: bool,
    /// The earlier layer whose KV this one reads instead of its own (Gemma 4
    /// E-series' trailing layers): it projects only Q, and must share a
    /// stage with that layer ([`ModelSpec::cut_allowed`]).
    pub kv_source: Option<usize>,
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
    /// Multi-section RoPE (`rope.dimension_sections`, Qwen3.5's IMRoPE). For
    /// text every section's position is the token's, which makes it NeoX
    /// RoPE over `dims`; the architecture file checks that it does.
    pub sections: Option<[usize; 4]>,
    /// Whether this layer divides its frequencies by the `rope_freqs`
    /// tensor (Gemma 4's global layers; llama3-style scaling applies it to
    /// every layer and does not set this).
    pub freq_factors: bool,
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
    /// The norm before it: `ffn_norm`, or `post_attention_norm` (Qwen3.5).
    pub norm_name: &'static str,
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
    /// The norm before the feed-forward is `post_attention_norm` (gpt-oss,
    /// Qwen3.5) or `pre_ffw_norm_2` (Gemma 4) rather than `ffn_norm`.
    pub norm_name: &'static str,
    /// A shared expert every token runs, weighted by a sigmoid of its own
    /// one-row router (Qwen3.5-MoE's `*_shexp`).
    pub shared: Option<SharedExpert>,
    /// Gemma 4's MoE layers: a dense MLP (`ffn_*`, normed by `ffn_norm`,
    /// then `post_ffw_norm_1`) runs beside the experts (normed after by
    /// `post_ffw_norm_2`), and their sum by `post_ffw_norm`. Its router reads
    /// the unweighted-normed row scaled by 1/sqrt(d_model) and
    /// `ffn_gate_inp.scale`.
    pub dense_beside: Option<DenseSpec>,
    /// Each expert's output multiplied by its entry of `ffn_down_exps.scale`.
    pub expert_out_scale: bool,
}

/// Qwen3.5-MoE's shared expert: a SwiGLU of width `d_ff` whose output is
/// multiplied by sigmoid(`ffn_gate_inp_shexp` · x).
#[derive(Debug, Clone, PartialEq)]
pub struct SharedExpert {
    pub d_ff: usize,
}

impl ModelSpec {
    /// Block `il` of the file (`blk.il.*`): a trunk layer, or past the trunk
    /// an MTP block.
    pub fn block(&self, il: usize) -> Option<&LayerSpec> {
        self.layers
            .get(il)
            .or_else(|| self.mtp_layers.get(il.checked_sub(self.n_layers)?))
    }

    /// The attention of layer `il`; `None` for a recurrent layer.
    pub fn attention(&self, il: usize) -> Option<&AttentionSpec> {
        match &self.layers[il].mixer {
            Mixer::Attention(a) => Some(a),
            Mixer::DeltaNet(_) => None,
        }
    }

    /// The DeltaNet of layer `il`; `None` for an attention layer.
    pub fn delta_net(&self, il: usize) -> Option<&DeltaNetSpec> {
        match &self.layers[il].mixer {
            Mixer::DeltaNet(d) => Some(d),
            Mixer::Attention(_) => None,
        }
    }

    /// Whether only some layers divide their RoPE frequencies by
    /// `rope_freqs` (Gemma 4's global layers); otherwise a file's
    /// `rope_freqs` applies to every layer (llama3-style scaling).
    pub fn per_layer_rope_factors(&self) -> bool {
        (0..self.n_layers)
            .filter_map(|il| self.attention(il))
            .any(|a| a.rope.freq_factors)
    }

    /// Whether a stage boundary may fall before layer `cut`: not between a
    /// layer that reads another layer's KV and that layer.
    pub fn cut_allowed(&self, cut: usize) -> bool {
        (cut..self.n_layers)
            .filter_map(|il| self.attention(il)?.kv_source)
            .all(|src| src >= cut)
    }

    /// Whether layer `il` holds KV of its own (attention that does not read
    /// another layer's).
    pub fn owns_kv(&self, il: usize) -> bool {
        self.attention(il).is_some_and(|a| a.kv_source.is_none())
    }

    /// Recurrent-state bytes one sequence holds over all layers.
    pub fn recurrent_state_bytes_per_seq(&self) -> u64 {
        (0..self.n_layers)
            .filter_map(|il| self.delta_net(il))
            .map(DeltaNetSpec::state_bytes_per_seq)
            .sum()
    }

    /// Whether llama-server checkpoints this model's state near a prompt's
    /// end (it has sliding-window or recurrent layers), which cuts the
    /// prompt's last batches ([`crate::attention_order::ServerBatching`]).
    pub fn server_checkpoints(&self) -> bool {
        (0..self.n_layers).any(|il| match self.attention(il) {
            Some(a) => a.window.is_some(),
            None => true,
        })
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
        check("block_count", self.n_layers, 4096)?;
        check("embedding_length", self.d_model, 1 << 20)?;
        check("vocab_size", self.vocab_size, 1 << 24)?;
        check("context_length", self.context_length, 1 << 30)?;
        if !fits(self.d_model.checked_mul(self.vocab_size)) {
            return Err(OVERFLOW.into());
        }
        if let Some(p) = self.per_layer_input {
            check("embedding_length_per_layer_input", p, 1 << 14)?;
            let table = p.checked_mul(self.n_layers);
            if !fits(table.and_then(|w| w.checked_mul(self.vocab_size.max(self.d_model)))) {
                return Err(OVERFLOW.into());
            }
        }
        for layer in self.layers.iter().chain(&self.mtp_layers) {
            match &layer.mixer {
                Mixer::Attention(a) => check_attention(a)?,
                Mixer::DeltaNet(d) => check_delta_net(d)?,
            }
            check_ffn(self.d_model, &layer.ffn)?;
        }
        Ok(())
    }
}

const OVERFLOW: &str = "hyper-parameters whose products overflow";

fn check(name: &str, v: usize, max: usize) -> Result<(), String> {
    if v > max {
        Err(format!("{name} {v} is past the supported {max}"))
    } else {
        Ok(())
    }
}

fn fits(p: Option<usize>) -> bool {
    p.is_some_and(|n| n <= 1 << 40)
}

fn check_attention(a: &AttentionSpec) -> Result<(), String> {
    check("attention.head_count", a.n_heads.max(a.n_kv_heads), 1 << 14)?;
    check(
        "attention.key_length / value_length",
        a.head_dim.max(a.head_dim_v),
        1 << 14,
    )?;
    check("attention.sliding_window", a.window.unwrap_or(0), 1 << 30)?;
    let products = [
        a.n_heads.checked_mul(a.head_dim),
        a.n_heads.checked_mul(a.head_dim_v),
        a.n_kv_heads.checked_mul(a.head_dim_v),
    ];
    if !products.into_iter().all(fits) {
        return Err(OVERFLOW.into());
    }
    Ok(())
}

/// The shapes ggml's DeltaNet ops assert: every value head pairs with a key
/// head, and the inner size is value heads × state size.
fn check_delta_net(d: &DeltaNetSpec) -> Result<(), String> {
    check("ssm.conv_kernel", d.d_conv, 64)?;
    check("ssm.state_size", d.d_state, 1 << 12)?;
    check("ssm.group_count", d.n_k_heads, 1 << 12)?;
    check("ssm.time_step_rank", d.n_v_heads, 1 << 12)?;
    check("ssm.inner_size", d.d_inner, 1 << 20)?;
    if d.d_conv < 2
        || d.d_state == 0
        || d.n_k_heads == 0
        || !d.n_v_heads.is_multiple_of(d.n_k_heads)
    {
        return Err(format!(
            "DeltaNet conv kernel {}, state size {}, {} value heads over {} key heads",
            d.d_conv, d.d_state, d.n_v_heads, d.n_k_heads
        ));
    }
    if d.d_inner != d.d_state * d.n_v_heads {
        return Err(format!(
            "ssm.inner_size {} is not ssm.state_size {} x ssm.time_step_rank {}",
            d.d_inner, d.d_state, d.n_v_heads
        ));
    }
    Ok(())
}

fn check_ffn(d_model: usize, ffn: &FeedForward) -> Result<(), String> {
    let (ff, n_expert, extra) = match ffn {
        FeedForward::Dense(d) => (d.d_ff, 1, 0),
        FeedForward::Moe(m) => {
            let beside = m.dense_beside.as_ref().map_or(0, |d| d.d_ff);
            let shared = m.shared.as_ref().map_or(0, |s| s.d_ff);
            (m.d_ff_expert, m.n_expert, beside.max(shared))
        }
    };
    check("feed_forward_length", ff.max(extra), 1 << 24)?;
    check("expert_count", n_expert, 1 << 12)?;
    if !fits(
        d_model
            .checked_mul(ff)
            .and_then(|n| n.checked_mul(n_expert)),
    ) {
        return Err(OVERFLOW.into());
    }
    Ok(())
}
