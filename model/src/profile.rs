//! Per-layer memory profile of a model: what the placement planner needs to
//! know without loading anything.

use crate::arch::{FeedForward, Mixer, ModelSpec};
use crate::gguf::GgufFile;

mod experts;
mod stage;
#[cfg(test)]
mod tests;

/// Copies of a sequence's state a stage holds per sequence it serves at
/// once: the live one, and a snapshot the prefix cache keeps (the state
/// after a prompt's last whole block, which a later prompt starting with
/// the same blocks resumes from; llama-server's context checkpoints do the
/// same). The state is what KV blocks cannot give back: a DeltaNet layer's
/// recurrent state rows, and a sliding-window layer's ring.
pub const STATE_COPIES_PER_SEQ: usize = 2;

pub use stage::{window_ring_blocks, StageLoad, StageMemory, StageMemoryTable, KV_BLOCK_TOKENS};

/// KV cache element type (llama.cpp's `--cache-type-k/-v` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvType {
    F16,
    /// ggml's q8_0 blocks: an f16 scale and 32 signed bytes.
    Q8_0,
    /// ggml's q4_0 blocks: an f16 scale and 32 nibbles.
    Q4_0,
}

impl KvType {
    pub const ALL: [KvType; 3] = [KvType::F16, KvType::Q8_0, KvType::Q4_0];

    /// Bytes to store `n` values (n a multiple of 32 for the block types).
    pub fn bytes_for(self, n: usize) -> usize {
        match self {
            KvType::F16 => 2 * n,
            KvType::Q8_0 => n.div_ceil(32) * 34,
            KvType::Q4_0 => n.div_ceil(32) * 18,
        }
    }
    /// The first position whose decode step attends in another order than
    /// a prompt row there (the last bits differ): ggml-cpu splits a decode
    /// step over 512+ of its cells (padded to 256, so from position 256)
    /// for f16 K/V, never for a quantized cache. KV a decode step wrote
    /// from there on is not what a prompt recomputing it writes.
    pub fn decode_order_differs_from(self) -> Option<usize> {
        match self {
            KvType::F16 => Some(256),
            KvType::Q8_0 | KvType::Q4_0 => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
            KvType::Q4_0 => "q4_0",
        }
    }
    /// The type named as llama.cpp names it (`f16`, `q8_0`, `q4_0`; any case).
    pub fn from_name(name: &str) -> Option<Self> {
        let name = name.to_ascii_lowercase();
        Self::ALL.into_iter().find(|t| t.name() == name)
    }
    /// The GGML type of a cached row.
    pub fn ggml_type(self) -> crate::GgmlType {
        match self {
            KvType::F16 => crate::GgmlType::F16,
            KvType::Q8_0 => crate::GgmlType::Q8_0,
            KvType::Q4_0 => crate::GgmlType::Q4_0,
        }
    }
    /// Values per quantization block (1 for f16): head slices of a cached
    /// row must be whole blocks.
    pub fn block_values(self) -> usize {
        match self {
            KvType::F16 => 1,
            KvType::Q8_0 | KvType::Q4_0 => 32,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LayerProfile {
    /// Every tensor of the layer, routed experts included.
    pub weight_bytes: u64,
    /// The part of `weight_bytes` in routed-expert tensors
    /// (`blk.N.ffn_{gate,up,down,gate_up}_exps.*`); 0 in a dense layer.
    pub expert_bytes: u64,
    /// Weight bytes one token reads in this layer: the dense part (attention,
    /// norms, router, shared experts) plus `expert_bytes x expert_used_count /
    /// expert_count`. Equal to `weight_bytes` in a dense layer.
    pub active_bytes_per_token: u64,
    /// K and V bytes per token of context for this layer, by KV type.
    pub kv_bytes_per_token_f16: u64,
    pub kv_bytes_per_token_q8_0: u64,
    pub kv_bytes_per_token_q4_0: u64,
    /// Sliding-window layers never hold more than the window.
    pub kv_window_tokens: Option<usize>,
    /// Recurrent state one sequence holds in this layer (a DeltaNet layer's
    /// f32 conv and SSM state, [`STATE_COPIES_PER_SEQ`] copies); 0 for
    /// attention layers. It does not grow with context: a DeltaNet layer
    /// has no KV.
    pub state_bytes_per_seq: u64,
}

impl LayerProfile {
    pub fn kv_bytes_per_token(&self, kv: KvType) -> u64 {
        match kv {
            KvType::F16 => self.kv_bytes_per_token_f16,
            KvType::Q8_0 => self.kv_bytes_per_token_q8_0,
            KvType::Q4_0 => self.kv_bytes_per_token_q4_0,
        }
    }
    /// Weights outside the routed experts.
    pub fn dense_bytes(&self) -> u64 {
        self.weight_bytes - self.expert_bytes
    }
    /// KV bytes one token's attention reads at `ctx_tokens` of context
    /// (sliding-window layers read only the window). Not what a stage holds:
    /// see [`MemoryProfile::stage_memory`].
    pub fn kv_read_bytes(&self, kv: KvType, ctx_tokens: usize) -> u64 {
        let held = self
            .kv_window_tokens
            .map_or(ctx_tokens, |w| w.min(ctx_tokens));
        self.kv_bytes_per_token(kv) * held as u64
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MemoryProfile {
    pub layers: Vec<LayerProfile>,
    /// Token embedding table (needed by the first stage).
    pub embedding_bytes: u64,
    /// Every stage holds the embedding table: with per-layer embeddings
    /// (Gemma 4 E-series) each stage embeds the tokens again for its
    /// layers' inputs.
    pub embedding_on_every_stage: bool,
    /// Layers a stage may not start at ([`ModelSpec::cut_allowed`]: Gemma
    /// 4's KV-sharing layers stay with the layer whose KV they read).
    pub no_cut_before: Vec<usize>,
    /// Final norm + output head (the last stage). With tied embeddings the
    /// head is the embedding table again, so the last stage holds a copy.
    pub head_bytes: u64,
    /// Multi-token-prediction blocks (Qwen3.5's `nextn`): held by the last
    /// stage beside the head, read by no decoded token of the main pass.
    pub mtp_bytes: u64,
    pub tied_embeddings: bool,
    /// f32 activations of one token through a layer (hidden, QKV, FFN), for
    /// sizing scratch: multiply by the largest batch in tokens.
    pub scratch_bytes_per_token: u64,
    /// f32 logits of one sequence.
    pub logits_bytes: u64,
    /// Routed experts per MoE layer, and how many of them each token uses
    /// (both 0 in a dense model).
    pub expert_count: usize,
    pub expert_used_count: usize,
}

impl MemoryProfile {
    pub fn from_gguf(f: &GgufFile, spec: &ModelSpec) -> Self {
        let mut layers = vec![0u64; spec.n_layers];
        let mut embedding_bytes = 0;
        let mut head_bytes = 0;
        let mut mtp_bytes = 0;
        let mut has_output = false;
        for t in &f.tensors {
            // The per-layer embedding tables: each stage loads its layers'
            // share (columns of one, rows of the other).
            if matches!(
                t.name.as_str(),
                "per_layer_token_embd.weight" | "per_layer_model_proj.weight"
            ) && spec.per_layer_input.is_some()
            {
                let n = layers.len() as u64;
                for (il, l) in layers.iter_mut().enumerate() {
                    let il = il as u64;
                    *l += t.size_bytes * (il + 1) / n - t.size_bytes * il / n;
                }
                continue;
            }
            if let Some(rest) = t.name.strip_prefix("blk.") {
                if let Some(il) = rest.split('.').next().and_then(|s| s.parse::<usize>().ok()) {
                    if il < layers.len() {
                        layers[il] += t.size_bytes;
                    } else if il < layers.len() + spec.mtp_layers.len() {
                        mtp_bytes += t.size_bytes;
                    }
                }
            } else if t.name == "token_embd.weight" {
                embedding_bytes += t.size_bytes;
            } else if t.name == "output.weight" {
                has_output = true;
                head_bytes += t.size_bytes;
            } else {
                // output_norm, rope_freqs: small, carried by the last stage.
                head_bytes += t.size_bytes;
            }
        }
        if !has_output {
            head_bytes += embedding_bytes;
        }
        let layers = layers
            .into_iter()
            .enumerate()
            .map(|(il, weight_bytes)| {
                // A recurrent layer holds no KV, only its per-sequence
                // state; a layer reading another's KV holds none.
                let (k, v, window) = spec
                    .attention(il)
                    .filter(|_| spec.owns_kv(il))
                    .map_or((0, 0, None), |a| (a.k_dim(), a.v_dim(), a.window));
                LayerProfile {
                    weight_bytes,
                    expert_bytes: 0,
                    active_bytes_per_token: weight_bytes,
                    kv_bytes_per_token_f16: KvType::F16.bytes_for(k + v) as u64,
                    kv_bytes_per_token_q8_0: (KvType::Q8_0.bytes_for(k) + KvType::Q8_0.bytes_for(v))
                        as u64,
                    kv_bytes_per_token_q4_0: (KvType::Q4_0.bytes_for(k) + KvType::Q4_0.bytes_for(v))
                        as u64,
                    kv_window_tokens: window,
                    state_bytes_per_seq: spec
                        .delta_net(il)
                        .map_or(0, |d| d.state_bytes_per_seq() * STATE_COPIES_PER_SEQ as u64),
                }
            })
            .collect();
        // The widest layer's f32 activations per token.
        let per_token_f32 = (0..spec.n_layers)
            .map(|il| {
                let mixer = match &spec.layers[il].mixer {
                    Mixer::Attention(a) => {
                        let gate = if a.output_gate { a.q_dim() } else { 0 };
                        a.q_dim() + gate + a.k_dim() + a.v_dim()
                    }
                    // qkv through the conv, the z gate, beta and alpha.
                    Mixer::DeltaNet(d) => d.conv_dim() + d.d_inner + 2 * d.n_v_heads,
                };
                let ff = match &spec.layers[il].ffn {
                    FeedForward::Dense(d) => d.d_ff,
                    FeedForward::Moe(m) => {
                        let beside = m.dense_beside.as_ref().map_or(0, |d| d.d_ff);
                        let shared = m.shared.as_ref().map_or(0, |s| s.d_ff);
                        m.d_ff_expert * m.n_used + m.n_expert + beside + shared
                    }
                };
                spec.d_model * 3 + mixer + 2 * ff
            })
            .max()
            .unwrap_or(0)
            // Per-layer inputs: the token's row of every layer, and the
            // projection of the stage's.
            + spec.per_layer_input.map_or(0, |p| 2 * p * spec.n_layers + spec.d_model);
        let mut profile = MemoryProfile {
            layers,
            embedding_bytes,
            embedding_on_every_stage: spec.per_layer_input.is_some(),
            no_cut_before: (1..spec.n_layers)
                .filter(|&c| !spec.cut_allowed(c))
                .collect(),
            head_bytes,
            mtp_bytes,
            tied_embeddings: !has_output,
            scratch_bytes_per_token: 4 * per_token_f32 as u64,
            logits_bytes: 4 * spec.vocab_size as u64,
            expert_count: 0,
            expert_used_count: 0,
        };
        profile.count_experts(f);
        profile
    }

    /// Every weight a placement holds: layers, the embedding and the head
    /// (a tied head counted as its copy).
    pub fn total_weight_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.weight_bytes).sum::<u64>()
            + self.embedding_bytes
            + self.head_bytes
            + self.mtp_bytes
    }

    /// Routed-expert weights over all layers.
    pub fn total_expert_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.expert_bytes).sum()
    }

    /// Weight bytes one decoded token reads: every layer's active bytes and
    /// the output head (the embedding lookup reads one row, left out). For a
    /// dense model, all weights but the embedding; for a MoE model far less
    /// than the file: this, not the file size, sets decode speed.
    pub fn active_bytes_per_token(&self) -> u64 {
        self.layers
            .iter()
            .map(|l| l.active_bytes_per_token)
            .sum::<u64>()
            + self.head_bytes
    }

    /// Recurrent state one sequence holds over all layers (0 without
    /// DeltaNet layers).
    pub fn state_bytes_per_seq(&self) -> u64 {
        self.layers.iter().map(|l| l.state_bytes_per_seq).sum()
    }

    /// Whether a stage may start at layer `cut`.
    pub fn cut_allowed(&self, cut: usize) -> bool {
        !self.no_cut_before.contains(&cut)
    }

    /// Whether any layer has routed experts.
    pub fn is_moe(&self) -> bool {
        self.layers.iter().any(|l| l.expert_bytes > 0)
    }
}
