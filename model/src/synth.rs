//! Random-weight GGUF models with the shapes of real ones, for sizes no real
//! file here has. They cost the same to run as the real thing.
//!
//! Weights are valid quantized blocks (a pool of randomly drawn rows,
//! quantized with the reference quantizers and cycled), so every kernel
//! reads realistic data; the tokenizer is byte-level BPE with one merge.

use std::io::{self, Write};
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::arch::Architecture;
use crate::gguf::{GgufWriteError, GgufWriter, MetaValue};
use crate::quant::{quantize_row, GgmlType};

/// A model shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub d_ff: usize,
    pub vocab_size: usize,
    pub rope_base: f32,
    pub tied_embeddings: bool,
}

/// Preset names per architecture, smallest first.
pub fn presets(arch: Architecture) -> &'static [&'static str] {
    match arch {
        Architecture::Llama => &["tiny", "135m", "1b", "8b", "70b"],
        Architecture::Qwen2 => &["tiny", "0.5b", "7b", "72b"],
        Architecture::Qwen3 => &["tiny", "0.6b", "8b", "32b"],
        Architecture::Gemma3 => &["tiny", "270m", "1b", "4b", "12b", "27b"],
        Architecture::Qwen3Moe | Architecture::GptOss | Architecture::Mistral3 => &[],
    }
}

/// The shape of a real model of this architecture and size.
pub fn preset(arch: Architecture, name: &str) -> Option<Shape> {
    #[rustfmt::skip]
    let s = |n_layers, d_model, n_heads, n_kv_heads, head_dim, d_ff, vocab_size, rope_base, tied| Shape {
        n_layers, d_model, n_heads, n_kv_heads, head_dim, d_ff, vocab_size, rope_base, tied_embeddings: tied,
    };
    let name = name.to_ascii_lowercase();
    Some(match (arch, name.as_str()) {
        (Architecture::Llama, "tiny") => s(4, 256, 4, 2, 64, 768, 2048, 10_000.0, false),
        (Architecture::Llama, "135m") => s(30, 576, 9, 3, 64, 1536, 49152, 100_000.0, true),
        (Architecture::Llama, "1b") => s(16, 2048, 32, 8, 64, 8192, 128_256, 500_000.0, true),
        (Architecture::Llama, "8b") => s(32, 4096, 32, 8, 128, 14336, 128_256, 500_000.0, false),
        (Architecture::Llama, "70b") => s(80, 8192, 64, 8, 128, 28672, 128_256, 500_000.0, false),
        (Architecture::Qwen2, "tiny") => s(4, 256, 4, 2, 64, 768, 2048, 1_000_000.0, true),
        (Architecture::Qwen2, "0.5b") => s(24, 896, 14, 2, 64, 4864, 151_936, 1_000_000.0, true),
        (Architecture::Qwen2, "7b") => s(28, 3584, 28, 4, 128, 18944, 152_064, 1_000_000.0, false),
        (Architecture::Qwen2, "72b") => s(80, 8192, 64, 8, 128, 29568, 152_064, 1_000_000.0, false),
        (Architecture::Qwen3, "tiny") => s(4, 256, 4, 2, 128, 768, 2048, 1_000_000.0, true),
        (Architecture::Qwen3, "0.6b") => s(28, 1024, 16, 8, 128, 3072, 151_936, 1_000_000.0, true),
        (Architecture::Qwen3, "8b") => s(36, 4096, 32, 8, 128, 12288, 151_936, 1_000_000.0, false),
        (Architecture::Qwen3, "32b") => s(64, 5120, 64, 8, 128, 25600, 151_936, 1_000_000.0, false),
        (Architecture::Gemma3, "tiny") => s(6, 256, 4, 1, 64, 768, 2048, 1_000_000.0, true),
        (Architecture::Gemma3, "270m") => s(18, 640, 4, 1, 256, 2048, 262_144, 1_000_000.0, true),
        (Architecture::Gemma3, "1b") => s(26, 1152, 4, 1, 256, 6912, 262_144, 1_000_000.0, true),
        (Architecture::Gemma3, "4b") => s(34, 2560, 8, 4, 256, 10240, 262_144, 1_000_000.0, true),
        (Architecture::Gemma3, "12b") => s(48, 3840, 16, 8, 256, 15360, 262_144, 1_000_000.0, true),
        (Architecture::Gemma3, "27b") => {
            s(62, 5376, 32, 16, 128, 21504, 262_144, 1_000_000.0, true)
        }
        _ => return None,
    })
}

/// A quantization scheme: one type, or llama.cpp's mixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantScheme {
    Uniform(GgmlType),
    /// Q4_K, with Q6_K for the output head and for attn_v / ffn_down of the
    /// layers llama.cpp gives more bits.
    Q4KM,
    /// Q5_K, same rule.
    Q5KM,
}

impl QuantScheme {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "Q4_K_M" => Some(Self::Q4KM),
            "Q5_K_M" => Some(Self::Q5KM),
            "Q4_K_S" => Some(Self::Uniform(GgmlType::Q4K)),
            "Q5_K_S" => Some(Self::Uniform(GgmlType::Q5K)),
            other => GgmlType::from_name(other)
                .filter(|t| !matches!(t, GgmlType::Q8_1 | GgmlType::Q8K))
                .map(Self::Uniform),
        }
    }

    /// `general.file_type` as llama.cpp numbers it.
    fn file_type(self) -> u32 {
        match self {
            Self::Q4KM => 15,
            Self::Q5KM => 17,
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
                GgmlType::Q8_1 | GgmlType::Q8K => 0,
            },
        }
    }

    /// The type of a 2-D weight: `role` is the GGUF tensor name's last part.
    fn weight_type(self, role: &str, layer: Option<usize>, n_layers: usize) -> GgmlType {
        let more_bits =
            |il: usize| il < n_layers / 8 || il >= 7 * n_layers / 8 || (il - n_layers / 8) % 3 == 2;
        match self {
            Self::Uniform(t) => t,
            Self::Q4KM | Self::Q5KM => {
                let base = if self == Self::Q4KM {
                    GgmlType::Q4K
                } else {
                    GgmlType::Q5K
                };
                match (role, layer) {
                    ("output", _) => GgmlType::Q6K,
                    ("attn_v" | "ffn_down", Some(il)) if more_bits(il) => GgmlType::Q6K,
                    _ => base,
                }
            }
        }
    }
}

/// llama.cpp's fallback when a row is not a whole number of 256-blocks.
fn fit_row(t: GgmlType, row_len: usize) -> GgmlType {
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
        })
    }

    /// The writer with all metadata and tensor specs (no data yet).
    pub fn writer(&self) -> Result<GgufWriter, GgufWriteError> {
        let (a, s) = (self.arch.name(), &self.shape);
        let mut w = GgufWriter::new();
        let key = |k: &str| format!("{a}.{k}");
        w.add_metadata("general.architecture", MetaValue::String(a.into()));
        w.add_metadata(
            "general.name",
            MetaValue::String(format!("strata synth {a} {} layers", s.n_layers)),
        );
        w.add_metadata("general.file_type", MetaValue::U32(self.quant.file_type()));
        w.add_metadata("general.quantization_version", MetaValue::U32(2));
        w.add_metadata(key("block_count"), MetaValue::U32(s.n_layers as u32));
        w.add_metadata(
            key("context_length"),
            MetaValue::U32(if self.arch == Architecture::Llama {
                131_072
            } else {
                32_768
            }),
        );
        w.add_metadata(key("embedding_length"), MetaValue::U32(s.d_model as u32));
        w.add_metadata(key("feed_forward_length"), MetaValue::U32(s.d_ff as u32));
        w.add_metadata(
            key("attention.head_count"),
            MetaValue::U32(s.n_heads as u32),
        );
        w.add_metadata(
            key("attention.head_count_kv"),
            MetaValue::U32(s.n_kv_heads as u32),
        );
        w.add_metadata(
            key("attention.key_length"),
            MetaValue::U32(s.head_dim as u32),
        );
        w.add_metadata(
            key("attention.value_length"),
            MetaValue::U32(s.head_dim as u32),
        );
        w.add_metadata(
            key("attention.layer_norm_rms_epsilon"),
            MetaValue::F32(1e-6),
        );
        w.add_metadata(key("rope.freq_base"), MetaValue::F32(s.rope_base));
        w.add_metadata(
            key("rope.dimension_count"),
            MetaValue::U32(s.head_dim as u32),
        );
        w.add_metadata(key("vocab_size"), MetaValue::U32(s.vocab_size as u32));
        if self.arch == Architecture::Gemma3 {
            w.add_metadata(key("attention.sliding_window"), MetaValue::U32(512));
        }
        add_tokenizer(&mut w, s.vocab_size);

        let n = s.n_layers;
        let tensor = |w: &mut GgufWriter,
                      name: String,
                      dims: &[usize],
                      t: GgmlType|
         -> Result<(), GgufWriteError> {
            let dims: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
            w.add_tensor(name, &dims, fit_row(t, dims[0] as usize))
                .map(|_| ())
        };
        let (d, q, kv, ff) = (
            s.d_model,
            s.n_heads * s.head_dim,
            s.n_kv_heads * s.head_dim,
            s.d_ff,
        );
        tensor(
            &mut w,
            "token_embd.weight".into(),
            &[d, s.vocab_size],
            self.quant.weight_type("token_embd", None, n),
        )?;
        for il in 0..n {
            let wt = |role: &str| self.quant.weight_type(role, Some(il), n);
            let b = |name: &str| format!("blk.{il}.{name}");
            tensor(&mut w, b("attn_norm.weight"), &[d], GgmlType::F32)?;
            tensor(&mut w, b("attn_q.weight"), &[d, q], wt("attn_q"))?;
            tensor(&mut w, b("attn_k.weight"), &[d, kv], wt("attn_k"))?;
            tensor(&mut w, b("attn_v.weight"), &[d, kv], wt("attn_v"))?;
            if self.arch == Architecture::Qwen2 {
                tensor(&mut w, b("attn_q.bias"), &[q], GgmlType::F32)?;
                tensor(&mut w, b("attn_k.bias"), &[kv], GgmlType::F32)?;
                tensor(&mut w, b("attn_v.bias"), &[kv], GgmlType::F32)?;
            }
            if matches!(self.arch, Architecture::Qwen3 | Architecture::Gemma3) {
                tensor(
                    &mut w,
                    b("attn_q_norm.weight"),
                    &[s.head_dim],
                    GgmlType::F32,
                )?;
                tensor(
                    &mut w,
                    b("attn_k_norm.weight"),
                    &[s.head_dim],
                    GgmlType::F32,
                )?;
            }
            tensor(&mut w, b("attn_output.weight"), &[q, d], wt("attn_output"))?;
            tensor(&mut w, b("ffn_norm.weight"), &[d], GgmlType::F32)?;
            tensor(&mut w, b("ffn_gate.weight"), &[d, ff], wt("ffn_gate"))?;
            tensor(&mut w, b("ffn_up.weight"), &[d, ff], wt("ffn_up"))?;
            tensor(&mut w, b("ffn_down.weight"), &[ff, d], wt("ffn_down"))?;
            if self.arch == Architecture::Gemma3 {
                tensor(&mut w, b("post_attention_norm.weight"), &[d], GgmlType::F32)?;
                tensor(&mut w, b("post_ffw_norm.weight"), &[d], GgmlType::F32)?;
            }
        }
        tensor(&mut w, "output_norm.weight".into(), &[d], GgmlType::F32)?;
        if !s.tied_embeddings {
            tensor(
                &mut w,
                "output.weight".into(),
                &[d, s.vocab_size],
                self.quant.weight_type("output", None, n),
            )?;
        }
        Ok(w)
    }

    /// Writes the model; `progress(bytes_written, total_bytes)` after each tensor.
    pub fn write(&self, path: &Path, mut progress: impl FnMut(u64, u64)) -> Result<(), SynthError> {
        let w = self.writer()?;
        let total: u64 = w.tensors().iter().map(|t| t.size_bytes).sum();
        let mut done = 0u64;
        let seed = self.seed;
        w.write(path, |i, spec, out| {
            write_tensor_data(
                seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                spec.dims[0] as usize,
                spec.dtype,
                spec.size_bytes,
                &spec.name,
                out,
            )?;
            done += spec.size_bytes;
            progress(done, total);
            Ok(())
        })?;
        Ok(())
    }
}

/// Rows drawn per tensor; the data cycles through them.
const POOL_ROWS: usize = 64;

fn write_tensor_data(
    seed: u64,
    row_len: usize,
    dtype: GgmlType,
    size_bytes: u64,
    name: &str,
    out: &mut dyn Write,
) -> io::Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let is_norm = name.ends_with("norm.weight");
    let row_bytes = dtype
        .row_bytes(row_len as u64)
        .ok_or_else(|| io::Error::other(format!("{name}: bad row length")))?
        as usize;
    let n_rows = (size_bytes / row_bytes as u64) as usize;
    let pool_rows = n_rows.min(POOL_ROWS);
    let mut pool = vec![0u8; pool_rows * row_bytes];
    let mut values = vec![0f32; row_len];
    for r in 0..pool_rows {
        for v in values.iter_mut() {
            // Norm weights near 1, biases and matrices small (std ~0.02).
            *v = if is_norm {
                1.0 + rng.random_range(-0.1..0.1)
            } else {
                rng.random_range(-0.035..0.035)
            };
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

/// GPT-2 byte-level BPE with one merge ("ĠĠ", two spaces): each byte is a
/// token; the rest of the vocabulary is filler so the embedding and head
/// have the real size. (One merge, not none: an empty array has no element
/// type, and llama.cpp refuses merges that are not strings.)
fn add_tokenizer(w: &mut GgufWriter, vocab_size: usize) {
    let byte_chars = gpt2_byte_chars();
    let mut tokens = Vec::with_capacity(vocab_size);
    let mut types = Vec::with_capacity(vocab_size);
    for c in byte_chars {
        tokens.push(MetaValue::String(c.to_string()));
        types.push(MetaValue::I32(1));
    }
    for name in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
        tokens.push(MetaValue::String(name.into()));
        types.push(MetaValue::I32(3));
    }
    tokens.push(MetaValue::String("ĠĠ".into()));
    types.push(MetaValue::I32(1));
    while tokens.len() < vocab_size {
        tokens.push(MetaValue::String(format!("<synth_{}>", tokens.len())));
        types.push(MetaValue::I32(4));
    }
    tokens.truncate(vocab_size);
    types.truncate(vocab_size);
    w.add_metadata("tokenizer.ggml.model", MetaValue::String("gpt2".into()));
    w.add_metadata("tokenizer.ggml.pre", MetaValue::String("gpt-2".into()));
    w.add_metadata("tokenizer.ggml.tokens", MetaValue::Array(tokens));
    w.add_metadata("tokenizer.ggml.token_type", MetaValue::Array(types));
    w.add_metadata(
        "tokenizer.ggml.merges",
        MetaValue::Array(vec![MetaValue::String("Ġ Ġ".into())]),
    );
    w.add_metadata("tokenizer.ggml.bos_token_id", MetaValue::U32(256));
    w.add_metadata("tokenizer.ggml.eos_token_id", MetaValue::U32(258));
    w.add_metadata("tokenizer.ggml.add_bos_token", MetaValue::Bool(false));
    w.add_metadata(
        "tokenizer.chat_template",
        MetaValue::String(
            "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}\
             {% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
                .into(),
        ),
    );
}

/// GPT-2's printable stand-ins for the 256 byte values.
fn gpt2_byte_chars() -> Vec<char> {
    let mut chars = vec!['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        chars[b as usize] = if printable {
            char::from_u32(b).unwrap_or('?')
        } else {
            let c = char::from_u32(next).unwrap_or('?');
            next += 1;
            c
        };
    }
    chars
}
