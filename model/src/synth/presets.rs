//! The shapes of real models, by architecture and size.
//!
//! Each "tiny" preset is small enough for a debug-build test yet keeps what
//! makes its architecture different (for the mixture-of-experts ones: enough
//! experts, and rows that fill whole K-quant blocks); its other values
//! (sliding window, YaRN's original context) are cut down so a prompt of a
//! few dozen tokens reaches them.

use crate::arch::Architecture;

use super::{Experts, Shape, Yarn};

/// Preset names per architecture, smallest first.
pub fn presets(arch: Architecture) -> &'static [&'static str] {
    match arch {
        Architecture::Llama => &["tiny", "135m", "1b", "8b", "70b"],
        Architecture::Qwen2 => &["tiny", "0.5b", "7b", "72b"],
        Architecture::Qwen3 => &["tiny", "0.6b", "8b", "32b"],
        Architecture::Gemma3 => &["tiny", "270m", "1b", "4b", "12b", "27b"],
        Architecture::Qwen3Moe => &["tiny", "30b-a3b", "235b-a22b"],
        Architecture::GptOss => &["tiny", "20b", "120b"],
        Architecture::Mistral3 => &["tiny", "14b"],
    }
}

/// The shape of a real model of this architecture and size.
pub fn preset(arch: Architecture, name: &str) -> Option<Shape> {
    let name = name.to_ascii_lowercase();
    match arch {
        Architecture::Llama | Architecture::Qwen2 | Architecture::Qwen3 | Architecture::Gemma3 => {
            dense(arch, &name)
        }
        Architecture::Qwen3Moe => qwen3moe(&name),
        Architecture::GptOss => gpt_oss(&name),
        Architecture::Mistral3 => mistral3(&name),
    }
}

/// A shape with no experts, no RoPE scaling and no sliding window.
#[allow(clippy::too_many_arguments)]
fn base(
    n_layers: usize,
    d_model: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    d_ff: usize,
    vocab_size: usize,
    rope_base: f32,
    tied_embeddings: bool,
) -> Shape {
    Shape {
        n_layers,
        d_model,
        n_heads,
        n_kv_heads,
        head_dim,
        d_ff,
        vocab_size,
        rope_base,
        tied_embeddings,
        context_length: 32_768,
        rms_eps: 1e-6,
        sliding_window: None,
        experts: None,
        yarn: None,
        attn_temperature_scale: None,
    }
}

#[rustfmt::skip]
fn dense(arch: Architecture, name: &str) -> Option<Shape> {
    let s = base;
    let mut shape = match (arch, name) {
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
        (Architecture::Gemma3, "27b") => s(62, 5376, 32, 16, 128, 21504, 262_144, 1_000_000.0, true),
        _ => return None,
    };
    if arch == Architecture::Llama {
        shape.context_length = 131_072;
    }
    if arch == Architecture::Gemma3 {
        shape.sliding_window = Some(512);
    }
    Some(shape)
}

/// Qwen3-30B-A3B and Qwen3-235B-A22B (their `config.json`): Qwen3
/// attention, every layer's feed-forward a softmax-routed mixture of experts.
fn qwen3moe(name: &str) -> Option<Shape> {
    let moe = |s: Shape, count, used, d_ff| Shape {
        experts: Some(Experts { count, used, d_ff }),
        ..s
    };
    let real = |s: Shape| Shape {
        context_length: 40_960,
        ..s
    };
    Some(match name {
        // 16 experts, not 8: llama.cpp's quantizer gives 8-expert models
        // (Mixtral) their own attention types. Expert rows of 256 fill a
        // K-quant block.
        "tiny" => moe(
            base(4, 256, 4, 2, 128, 768, 2048, 1_000_000.0, false),
            16,
            2,
            256,
        ),
        "30b-a3b" => real(moe(
            base(48, 2048, 32, 4, 128, 6144, 151_936, 1_000_000.0, false),
            128,
            8,
            768,
        )),
        "235b-a22b" => real(moe(
            base(94, 4096, 64, 4, 128, 12288, 151_936, 1_000_000.0, false),
            128,
            8,
            1536,
        )),
        _ => return None,
    })
}

/// gpt-oss-20b and -120b (their `config.json`): sliding window on every
/// other layer (the first one sliding), YaRN over a 4096-token original
/// context, experts of the model's width.
fn gpt_oss(name: &str) -> Option<Shape> {
    let oss = |n_layers, d_model, n_heads, n_kv_heads, vocab_size, experts: Experts| Shape {
        context_length: 131_072,
        rms_eps: 1e-5,
        sliding_window: Some(128),
        experts: Some(experts),
        yarn: Some(Yarn {
            factor: 32.0,
            original_context: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            log_mul: None,
        }),
        ..base(
            n_layers,
            d_model,
            n_heads,
            n_kv_heads,
            64,
            experts.d_ff,
            vocab_size,
            150_000.0,
            false,
        )
    };
    let e = |count, used, d_ff| Experts { count, used, d_ff };
    Some(match name {
        // A 16-token window and a 128-token original context, so that a
        // short prompt crosses both.
        "tiny" => {
            let mut s = oss(4, 256, 8, 2, 2048, e(8, 2, 256));
            s.context_length = 4096;
            s.sliding_window = Some(16);
            if let Some(y) = s.yarn.as_mut() {
                y.original_context = 128;
            }
            s
        }
        "20b" => oss(24, 2880, 64, 8, 201_088, e(32, 4, 2880)),
        "120b" => oss(36, 2880, 64, 8, 201_088, e(128, 4, 2880)),
        _ => return None,
    })
}

/// Ministral-3 14B (`text_config` of its `config.json`): Llama layers with
/// YaRN (factor 16 over 16384 tokens) and Llama-4 attention temperature
/// scaling (beta 0.1), which llama.cpp floors in steps of the original
/// context.
fn mistral3(name: &str) -> Option<Shape> {
    let m3 = |s: Shape, original_context| Shape {
        rms_eps: 1e-5,
        yarn: Some(Yarn {
            factor: 16.0,
            original_context,
            beta_fast: 32.0,
            beta_slow: 1.0,
            log_mul: Some(1.0),
        }),
        attn_temperature_scale: Some(0.1),
        ..s
    };
    Some(match name {
        // A 32-token original context: positions past it get the
        // temperature scale within a short test.
        "tiny" => Shape {
            context_length: 512,
            ..m3(
                base(4, 256, 4, 2, 64, 768, 2048, 1_000_000_000.0, false),
                32,
            )
        },
        "14b" => Shape {
            context_length: 262_144,
            ..m3(
                base(40, 5120, 32, 8, 128, 16384, 131_072, 1_000_000_000.0, false),
                16_384,
            )
        },
        _ => return None,
    })
}
