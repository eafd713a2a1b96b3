//! Random-weight GGUF models with the shapes of real ones, for sizes no real
//! file here has. They cost the same to run as the real thing.
//!
//! Weights are valid quantized blocks (a pool of randomly drawn rows,
//! quantized with the reference quantizers and cycled), so every kernel
//! reads realistic data; the tokenizer is byte-level BPE with one merge.
//! Metadata keys and tensor names are llama.cpp's, so llama.cpp loads the
//! files and its outputs on them are references (tests/data/synth-*.json).

mod gemma4;
mod presets;
mod qwen35;
mod scheme;
mod tokenizer;

use std::io::{self, Write};
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::arch::Architecture;
use crate::gguf::{GgufWriteError, GgufWriter, MetaValue, TensorSpec};
use crate::quant::{quantize_row, GgmlType};

pub use presets::{preset, presets};
use scheme::fit_row;
pub use scheme::QuantScheme;
use tokenizer::add_tokenizer;

/// A model shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// The dense feed-forward width (`feed_forward_length`); with experts,
    /// what the metadata reports, not a tensor's size.
    pub d_ff: usize,
    pub vocab_size: usize,
    pub rope_base: f32,
    pub tied_embeddings: bool,
    /// `context_length`: the context the model was trained for.
    pub context_length: usize,
    pub rms_eps: f32,
    /// `attention.sliding_window`, for the architectures that have one.
    pub sliding_window: Option<usize>,
    /// A mixture-of-experts feed-forward in every layer.
    pub experts: Option<Experts>,
    /// YaRN RoPE scaling.
    pub yarn: Option<Yarn>,
    /// `attention.temperature_scale` (Ministral-3's Llama-4 scaling beta).
    pub attn_temperature_scale: Option<f32>,
    /// `rope.dimension_count` where RoPE rotates only part of each head
    /// (Qwen3.5: 64 of 256); `None` rotates the whole head.
    pub rope_dims: Option<usize>,
    /// Qwen3.5's gated DeltaNet layers and multi-section RoPE.
    pub delta_net: Option<DeltaNetShape>,
    /// Gemma 4's sliding layers and the rest of what sets it apart.
    pub gemma4: Option<Gemma4Shape>,
}

/// Qwen3.5 / 3.6's linear-attention layers (`ssm.*` keys): every
/// `full_attention_interval`-th layer is gated full attention, the others
/// gated DeltaNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaNetShape {
    /// `ssm.conv_kernel`.
    pub d_conv: usize,
    /// `ssm.state_size`: the head dim of DeltaNet keys and values.
    pub d_state: usize,
    /// `ssm.group_count`: key (and query) heads.
    pub n_k_heads: usize,
    /// `ssm.time_step_rank`: value heads; `ssm.inner_size` is this × d_state.
    pub n_v_heads: usize,
    pub full_attention_interval: usize,
    /// `rope.dimension_sections` (multi-section RoPE, text uses the first three).
    pub rope_sections: [i32; 4],
    /// `nextn_predict_layers`: multi-token-prediction blocks after the
    /// trunk (`block_count` counts them), written after every other tensor
    /// so the trunk's bytes are those of the same shape without them.
    pub mtp_layers: usize,
}

/// Gemma 4: `Shape`'s heads are the global layers', these the sliding ones'.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gemma4Shape {
    /// `attention.key_length_swa` = `value_length_swa` = `rope.dimension_count_swa`.
    pub head_dim_swa: usize,
    /// The sliding layers' entry of the `attention.head_count_kv` array.
    pub n_kv_heads_swa: usize,
    /// `rope.freq_base_swa`.
    pub rope_base_swa: f32,
    /// One global layer every this many (`attention.sliding_window_pattern`
    /// is written as the bool array llama.cpp requires).
    pub global_every: usize,
    /// `final_logit_softcapping`.
    pub final_softcap: f32,
    /// Fraction of a global head's pairs RoPE turns (the rest get frequency
    /// factor 1e30 in `rope_freqs`, "proportional RoPE").
    pub global_rope_fraction: f32,
    /// `embedding_length_per_layer_input` (the E-series; 0: none).
    pub per_layer_input: usize,
    /// `attention.shared_kv_layers`: trailing layers that read the KV of the
    /// last sliding and the last global layer before them (the E-series).
    pub shared_kv_layers: usize,
}

/// The experts of a mixture-of-experts feed-forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Experts {
    /// `expert_count`.
    pub count: usize,
    /// `expert_used_count`: experts each token is routed to.
    pub used: usize,
    /// `expert_feed_forward_length`: one expert's hidden width.
    pub d_ff: usize,
    /// `expert_shared_feed_forward_length`: a shared expert beside the routed
    /// ones (Qwen3.5-MoE).
    pub shared_d_ff: Option<usize>,
}

/// YaRN RoPE scaling (`rope.scaling.*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Yarn {
    pub factor: f32,
    /// `rope.scaling.original_context_length`, in tokens.
    pub original_context: usize,
    pub beta_fast: f32,
    pub beta_slow: f32,
    /// `rope.scaling.yarn_log_multiplier`, where the model has one.
    pub log_mul: Option<f32>,
}

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("unknown preset {preset:?} for {arch} (known: {known})")]
    UnknownPreset {
        arch: Architecture,
        preset: String,
        known: String,
    },
    #[error(transparent)]
    Write(#[from] GgufWriteError),
}

/// What to synthesise.
#[derive(Debug, Clone)]
pub struct SynthSpec {
    pub arch: Architecture,
    pub shape: Shape,
    pub quant: QuantScheme,
    pub seed: u64,
    /// `tokenizer.chat_template` in place of the built-in ChatML one (a
    /// family's own template, for tests of template features).
    pub chat_template: Option<String>,
}

impl SynthSpec {
    pub fn from_preset(
        arch: Architecture,
        preset_name: &str,
        quant: QuantScheme,
    ) -> Result<Self, SynthError> {
        let shape = preset(arch, preset_name).ok_or_else(|| SynthError::UnknownPreset {
            arch,
            preset: preset_name.to_string(),
            known: presets(arch).join(", "),
        })?;
        Ok(SynthSpec {
            arch,
            shape,
            quant,
            seed: 0,
            chat_template: None,
        })
    }

    /// The writer with all metadata and tensor specs (no data yet).
    pub fn writer(&self) -> Result<GgufWriter, GgufWriteError> {
        let mut w = GgufWriter::new();
        self.add_metadata(&mut w);
        add_tokenizer(&mut w, self.shape.vocab_size, self.chat_template.as_deref());
        self.add_tensors(&mut w)?;
        Ok(w)
    }

    fn add_metadata(&self, w: &mut GgufWriter) {
        let (a, s) = (self.arch.name(), &self.shape);
        let key = |k: &str| format!("{a}.{k}");
        let u32_of = |v: usize| MetaValue::U32(v as u32);
        w.add_metadata("general.architecture", MetaValue::String(a.into()));
        w.add_metadata(
            "general.name",
            MetaValue::String(format!("strata synth {a} {} layers", s.n_layers)),
        );
        w.add_metadata("general.file_type", MetaValue::U32(self.quant.file_type()));
        w.add_metadata("general.quantization_version", MetaValue::U32(2));
        let mtp = s.delta_net.map_or(0, |dn| dn.mtp_layers);
        w.add_metadata(key("block_count"), u32_of(s.n_layers + mtp));
        w.add_metadata(key("context_length"), u32_of(s.context_length));
        w.add_metadata(key("embedding_length"), u32_of(s.d_model));
        w.add_metadata(key("feed_forward_length"), u32_of(s.d_ff));
        w.add_metadata(key("attention.head_count"), u32_of(s.n_heads));
        // Gemma 4 writes a per-layer array instead (gemma4.rs).
        if s.gemma4.is_none() {
            w.add_metadata(key("attention.head_count_kv"), u32_of(s.n_kv_heads));
        }
        w.add_metadata(key("attention.key_length"), u32_of(s.head_dim));
        w.add_metadata(key("attention.value_length"), u32_of(s.head_dim));
        w.add_metadata(
            key("attention.layer_norm_rms_epsilon"),
            MetaValue::F32(s.rms_eps),
        );
        w.add_metadata(key("rope.freq_base"), MetaValue::F32(s.rope_base));
        w.add_metadata(
            key("rope.dimension_count"),
            u32_of(s.rope_dims.unwrap_or(s.head_dim)),
        );
        w.add_metadata(key("vocab_size"), u32_of(s.vocab_size));
        if let Some(window) = s.sliding_window {
            w.add_metadata(key("attention.sliding_window"), u32_of(window));
        }
        if let Some(e) = s.experts {
            w.add_metadata(key("expert_count"), u32_of(e.count));
            w.add_metadata(key("expert_used_count"), u32_of(e.used));
            w.add_metadata(key("expert_feed_forward_length"), u32_of(e.d_ff));
            if let Some(ff) = e.shared_d_ff {
                w.add_metadata(key("expert_shared_feed_forward_length"), u32_of(ff));
            }
        }
        if let Some(dn) = s.delta_net {
            qwen35::add_metadata(w, &key, dn);
        }
        if let Some(g) = s.gemma4 {
            gemma4::add_metadata(w, &key, s, g);
        }
        if let Some(y) = s.yarn {
            w.add_metadata(key("rope.scaling.type"), MetaValue::String("yarn".into()));
            w.add_metadata(key("rope.scaling.factor"), MetaValue::F32(y.factor));
            w.add_metadata(
                key("rope.scaling.original_context_length"),
                u32_of(y.original_context),
            );
            w.add_metadata(
                key("rope.scaling.yarn_beta_fast"),
                MetaValue::F32(y.beta_fast),
            );
            w.add_metadata(
                key("rope.scaling.yarn_beta_slow"),
                MetaValue::F32(y.beta_slow),
            );
            if let Some(m) = y.log_mul {
                w.add_metadata(key("rope.scaling.yarn_log_multiplier"), MetaValue::F32(m));
            }
        }
        if let Some(t) = s.attn_temperature_scale {
            w.add_metadata(key("attention.temperature_scale"), MetaValue::F32(t));
        }
    }

    fn add_tensors(&self, w: &mut GgufWriter) -> Result<(), GgufWriteError> {
        let (s, n) = (&self.shape, self.shape.n_layers);
        add_tensor(
            w,
            "token_embd.weight".into(),
            &[s.d_model, s.vocab_size],
            self.quant.weight_type("token_embd", None, n),
        )?;
        if let Some(g) = s.gemma4 {
            gemma4::add_rope_freqs(w, s)?;
            gemma4::add_per_layer_tables(w, s, g, |role| self.quant.weight_type(role, None, n))?;
        }
        for il in 0..n {
            self.add_layer(w, il)?;
        }
        add_tensor(w, "output_norm.weight".into(), &[s.d_model], GgmlType::F32)?;
        if !s.tied_embeddings {
            add_tensor(
                w,
                "output.weight".into(),
                &[s.d_model, s.vocab_size],
                self.quant.weight_type("output", None, n),
            )?;
        }
        if let Some(dn) = s.delta_net {
            for il in n..n + dn.mtp_layers {
                qwen35::add_mtp_layer(self, w, il)?;
            }
        }
        Ok(())
    }

    fn add_layer(&self, w: &mut GgufWriter, il: usize) -> Result<(), GgufWriteError> {
        if let Some(dn) = self.shape.delta_net {
            return qwen35::add_layer(self, w, il, dn);
        }
        if let Some(g) = self.shape.gemma4 {
            return gemma4::add_layer(self, w, il, g);
        }
        let (s, arch) = (&self.shape, self.arch);
        let wt = |role: &str| self.quant.weight_type(role, Some(il), s.n_layers);
        let b = |name: &str| format!("blk.{il}.{name}");
        let f32 = GgmlType::F32;
        let (d, q, kv) = (s.d_model, s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim);
        add_tensor(w, b("attn_norm.weight"), &[d], f32)?;
        add_tensor(w, b("attn_q.weight"), &[d, q], wt("attn_q"))?;
        add_tensor(w, b("attn_k.weight"), &[d, kv], wt("attn_k"))?;
        add_tensor(w, b("attn_v.weight"), &[d, kv], wt("attn_v"))?;
        if matches!(arch, Architecture::Qwen2 | Architecture::GptOss) {
            add_tensor(w, b("attn_q.bias"), &[q], f32)?;
            add_tensor(w, b("attn_k.bias"), &[kv], f32)?;
            add_tensor(w, b("attn_v.bias"), &[kv], f32)?;
        }
        if matches!(
            arch,
            Architecture::Qwen3 | Architecture::Gemma3 | Architecture::Qwen3Moe
        ) {
            add_tensor(w, b("attn_q_norm.weight"), &[s.head_dim], f32)?;
            add_tensor(w, b("attn_k_norm.weight"), &[s.head_dim], f32)?;
        }
        add_tensor(w, b("attn_output.weight"), &[q, d], wt("attn_output"))?;
        if arch == Architecture::GptOss {
            add_tensor(w, b("attn_output.bias"), &[d], f32)?;
            add_tensor(w, b("attn_sinks.weight"), &[s.n_heads], f32)?;
        }
        // gpt-oss names its pre-feed-forward norm after the attention.
        let ffn_norm = if arch == Architecture::GptOss {
            "post_attention_norm.weight"
        } else {
            "ffn_norm.weight"
        };
        add_tensor(w, b(ffn_norm), &[d], f32)?;
        match s.experts {
            None => {
                let ff = s.d_ff;
                add_tensor(w, b("ffn_gate.weight"), &[d, ff], wt("ffn_gate"))?;
                add_tensor(w, b("ffn_up.weight"), &[d, ff], wt("ffn_up"))?;
                add_tensor(w, b("ffn_down.weight"), &[ff, d], wt("ffn_down"))?;
            }
            Some(e) => {
                // The router stays F32: llama.cpp's quantizer never touches it.
                add_tensor(w, b("ffn_gate_inp.weight"), &[d, e.count], f32)?;
                let (ff, ne) = (e.d_ff, e.count);
                add_expert_tensors(w, il, (d, ff, ne), wt)?;
                if arch == Architecture::GptOss {
                    add_tensor(w, b("ffn_gate_inp.bias"), &[ne], f32)?;
                    add_tensor(w, b("ffn_gate_exps.bias"), &[ff, ne], f32)?;
                    add_tensor(w, b("ffn_up_exps.bias"), &[ff, ne], f32)?;
                    add_tensor(w, b("ffn_down_exps.bias"), &[d, ne], f32)?;
                }
            }
        }
        if arch == Architecture::Gemma3 {
            add_tensor(w, b("post_attention_norm.weight"), &[d], f32)?;
            add_tensor(w, b("post_ffw_norm.weight"), &[d], f32)?;
        }
        Ok(())
    }

    /// Writes the model; `progress(bytes_written, total_bytes)` after each tensor.
    pub fn write(&self, path: &Path, mut progress: impl FnMut(u64, u64)) -> Result<(), SynthError> {
        let w = self.writer()?;
        let total: u64 = w.tensors().iter().map(|t| t.size_bytes).sum();
        let mut done = 0u64;
        w.write(path, |i, spec, out| {
            self.fill_tensor(i, spec, out)?;
            done += spec.size_bytes;
            progress(done, total);
            Ok(())
        })?;
        Ok(())
    }

    /// The whole file in memory, byte for byte what [`Self::write`] writes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, SynthError> {
        let w = self.writer()?;
        Ok(w.to_bytes(|i, spec, out| self.fill_tensor(i, spec, out))?)
    }

    /// Tensor `index`'s data.
    fn fill_tensor(&self, index: usize, spec: &TensorSpec, out: &mut dyn Write) -> io::Result<()> {
        if let Some(g) = self
            .shape
            .gemma4
            .filter(|_| spec.name == "rope_freqs.weight")
        {
            return gemma4::write_rope_freqs(&self.shape, g, out);
        }
        let row_len = spec.dims[0] as usize;
        // Every router row drawn: two experts with one row would tie.
        let pool_rows = if spec.name.contains("ffn_gate_inp.") {
            usize::MAX
        } else if self.distinct_rows() {
            POOL_ROWS.max(DISTINCT_POOL_ELEMS / row_len.max(1))
        } else {
            POOL_ROWS
        };
        write_tensor_data(
            self.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            row_len,
            pool_rows,
            spec.dtype,
            spec.size_bytes,
            &spec.name,
            out,
        )
    }

    /// Whether small tensors get all rows distinct. The architectures that
    /// came with llama.cpp references (tests/data/synth-*.json) do: a head
    /// whose rows repeat gives exactly tied logits, whose greedy pick no
    /// reference can fix. The older ones keep the 64-row pool (their files
    /// must not change).
    fn distinct_rows(&self) -> bool {
        matches!(
            self.arch,
            Architecture::Qwen3Moe
                | Architecture::GptOss
                | Architecture::Mistral3
                | Architecture::Qwen35
                | Architecture::Qwen35Moe
                | Architecture::Gemma4
        )
    }
}

/// Layer `il`'s stacked experts (gate, up, down: `ne` experts of width
/// `ff` over `d`), in the types `wt` gives their roles.
fn add_expert_tensors(
    w: &mut GgufWriter,
    il: usize,
    (d, ff, ne): (usize, usize, usize),
    wt: impl Fn(&str) -> GgmlType,
) -> Result<(), GgufWriteError> {
    let b = |name: &str| format!("blk.{il}.{name}");
    add_tensor(
        w,
        b("ffn_gate_exps.weight"),
        &[d, ff, ne],
        wt("ffn_gate_exps"),
    )?;
    add_tensor(w, b("ffn_up_exps.weight"), &[d, ff, ne], wt("ffn_up_exps"))?;
    add_tensor(
        w,
        b("ffn_down_exps.weight"),
        &[ff, d, ne],
        wt("ffn_down_exps"),
    )
}

fn add_tensor(
    w: &mut GgufWriter,
    name: String,
    dims: &[usize],
    t: GgmlType,
) -> Result<(), GgufWriteError> {
    let dims: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
    w.add_tensor(name, &dims, fit_row(t, dims[0] as usize))
        .map(|_| ())
}

/// Rows drawn per tensor; the data cycles through them.
const POOL_ROWS: usize = 64;
/// Where rows are distinct: elements drawn per tensor at most (4 MiB of f32).
const DISTINCT_POOL_ELEMS: usize = 1 << 20;

fn write_tensor_data(
    seed: u64,
    row_len: usize,
    max_pool_rows: usize,
    dtype: GgmlType,
    size_bytes: u64,
    name: &str,
    out: &mut dyn Write,
) -> io::Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let init = Init::of(name);
    let row_bytes = dtype
        .row_bytes(row_len as u64)
        .ok_or_else(|| io::Error::other(format!("{name}: bad row length")))?
        as usize;
    let n_rows = (size_bytes / row_bytes as u64) as usize;
    let pool_rows = n_rows.min(max_pool_rows);
    let mut pool = vec![0u8; pool_rows * row_bytes];
    let mut values = vec![0f32; row_len];
    for r in 0..pool_rows {
        for v in values.iter_mut() {
            *v = init.draw(&mut rng);
        }
        quantize_row(
            dtype,
            &values,
            &mut pool[r * row_bytes..(r + 1) * row_bytes],
        )
        .map_err(io::Error::other)?;
    }
    let mut r = 0;
    let mut step = 1usize;
    for _ in 0..n_rows {
        out.write_all(&pool[r * row_bytes..(r + 1) * row_bytes])?;
        r = (r + step) % pool_rows;
        if r == 0 {
            // Vary the cycle so consecutive rows of distant blocks differ.
            step = step % pool_rows.max(1) + 1;
        }
    }
    Ok(())
}

/// How a tensor's values are drawn, by its name.
enum Init {
    /// Biases and matrices: small (std ~0.02).
    Small,
    /// Norm weights and multiplicative scales: near 1.
    NearOne,
    /// Qwen3.5's `ssm_a` (stored as −exp(A_log)): negative, so that the
    /// DeltaNet decay exp(softplus(·)·a) stays below 1 and the state bounded.
    NegativeDecay,
    /// The DeltaNet's 4-tap causal conv: taps of a real model's magnitude,
    /// so the recurrence sees more than a whisper.
    ConvTaps,
}

impl Init {
    fn of(name: &str) -> Self {
        if name.ends_with("norm.weight")
            || name.ends_with("layer_output_scale.weight")
            || name.ends_with(".scale")
        {
            Init::NearOne
        } else if name.ends_with(".ssm_a") {
            Init::NegativeDecay
        } else if name.ends_with("ssm_conv1d.weight") {
            Init::ConvTaps
        } else {
            Init::Small
        }
    }

    fn draw(&self, rng: &mut ChaCha8Rng) -> f32 {
        match self {
            Init::Small => rng.random_range(-0.035..0.035),
            Init::NearOne => 1.0 + rng.random_range(-0.1..0.1),
            Init::NegativeDecay => -rng.random_range(-1.0f32..1.0).exp(),
            Init::ConvTaps => rng.random_range(-0.5..0.5),
        }
    }
}

#[cfg(test)]
mod tests;
