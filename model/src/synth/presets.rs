//! The shapes of real models, by architecture and size.
//!
//! Each "tiny" preset is small enough for a debug-build test yet keeps what
//! makes its architecture different (for the mixture-of-experts ones: enough
//! experts, and rows that fill whole K-quant blocks); its other values
//! (sliding window, YaRN's original context) are cut down so a prompt of a
//! few dozen tokens reaches them.

use crate::arch::Architecture;

use super::{DeltaNetShape, Experts, Gemma4Shape, Shape, Yarn};

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
        Architecture::Qwen35 => &["tiny", "tiny-mtp", "27b"],
        Architecture::Qwen35Moe => &["tiny", "tiny-mtp", "35b-a3b"],
        Architecture::Gemma4 => &["tiny", "tiny-moe", "tiny-e", "e2b", "e4b", "26b-a4b", "31b"],
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
        Architecture::Qwen35 | Architecture::Qwen35Moe => qwen35(arch, &name),
        Architecture::Gemma4 => gemma4(&name),
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
        rope_dims: None,
        delta_net: None,
        gemma4: None,
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
        experts: Some(Experts {
            count,
            used,
            d_ff,
            shared_d_ff: None,
        }),
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
    let e = |count, used, d_ff| Experts {
        count,
        used,
        d_ff,
        shared_d_ff: None,
    };
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

/// Qwen3.5 / 3.6: Qwen3.6-27B (dense) and Qwen3.6-35B-A3B (MoE), values from
/// the `llama_model_loader` dumps in docs/plans/qwen35-gemma4.md; the 27B's
/// width (5120) is the one the dumps lack, from its model card.
fn qwen35(arch: Architecture, name: &str) -> Option<Shape> {
    let moe = arch == Architecture::Qwen35Moe;
    let hybrid = |s: Shape, rope_dims, delta_net, experts| Shape {
        context_length: 262_144,
        rope_dims: Some(rope_dims),
        delta_net: Some(delta_net),
        experts,
        ..s
    };
    let dn = |n_k_heads, n_v_heads, rope_sections| DeltaNetShape {
        d_conv: 4,
        d_state: 128,
        n_k_heads,
        n_v_heads,
        full_attention_interval: 4,
        rope_sections,
        mtp_layers: 0,
    };
    let e = |count, used, d_ff| Experts {
        count,
        used,
        d_ff,
        shared_d_ff: Some(d_ff),
    };
    Some(match (moe, name) {
        // Layers 0-2 DeltaNet, 3 gated attention. 2 key heads under 4 value
        // heads, so value head h reads key head h mod 2. RoPE turns 16 of 64
        // dims in sections [3, 3, 2] (every pair gets a text angle, as in
        // the real [11, 11, 10] of 32). A 4096-token context keeps the KV
        // cache of a test small.
        (false, "tiny") | (true, "tiny") => Shape {
            context_length: 4096,
            ..hybrid(
                base(4, 256, 4, 2, 64, 768, 2048, 10_000_000.0, false),
                16,
                dn(2, 4, [3, 3, 2, 0]),
                moe.then(|| e(16, 4, 256)),
            )
        },
        // tiny with one MTP block after the trunk (whose tensors are
        // tiny's, byte for byte).
        (_, "tiny-mtp") => {
            let mut s = qwen35(arch, "tiny")?;
            if let Some(dn) = s.delta_net.as_mut() {
                dn.mtp_layers = 1;
            }
            s
        }
        (false, "27b") => hybrid(
            base(64, 5120, 24, 4, 256, 17408, 248_320, 10_000_000.0, false),
            64,
            dn(16, 48, [11, 11, 10, 0]),
            None,
        ),
        // feed_forward_length is only llama.cpp's fallback for the expert
        // widths here; the dumps have none, so it repeats the expert width.
        (true, "35b-a3b") => hybrid(
            base(40, 2048, 16, 2, 256, 512, 248_320, 10_000_000.0, false),
            64,
            dn(16, 32, [11, 11, 10, 0]),
            Some(e(256, 8, 512)),
        ),
        _ => return None,
    })
}

/// Gemma 4: 31B (dense) and 26B-A4B (experts beside the dense MLP). Values
/// from the llama.cpp dumps in docs/plans/qwen35-gemma4.md where they have
/// them; the rest are not verified against a real file: the 31B's MLP width
/// (21504, Gemma-3-27B's), the 26B's MLP width (2112, from a third-party
/// spec sheet) and its global KV heads (2). Global layers: V from K, RoPE
/// over a quarter of each head (`rope_freqs`), base 1e6. The E-series'
/// layer counts (35, 42) and E4B's 18 shared-KV layers are llama.cpp's
/// (docs/plans/qwen35-gemma4.md §2.4); their widths, E2B's 20 shared
/// layers and its 1-in-5 global pattern are not verified, and both keep one
/// MLP width where the real files double it on the shared-KV layers.
fn gemma4(name: &str) -> Option<Shape> {
    let g4 = |s: Shape, head_dim_swa, n_kv_heads_swa, window, experts| Shape {
        context_length: 262_144,
        sliding_window: Some(window),
        experts,
        gemma4: Some(Gemma4Shape {
            head_dim_swa,
            n_kv_heads_swa,
            rope_base_swa: 10_000.0,
            global_every: 6,
            final_softcap: 30.0,
            global_rope_fraction: 0.25,
            per_layer_input: 0,
            shared_kv_layers: 0,
        }),
        ..s
    };
    // The E-series: per-layer embeddings of width `ple`, the last `shared`
    // layers reading the KV of the last sliding and global layers before.
    let e_series = |s: Shape, global_every, ple, shared| {
        let mut s = s;
        if let Some(g) = s.gemma4.as_mut() {
            g.global_every = global_every;
            g.per_layer_input = ple;
            g.shared_kv_layers = shared;
        }
        s
    };
    let e = |count, used, d_ff| Experts {
        count,
        used,
        d_ff,
        shared_d_ff: None,
    };
    // Layers 0-4 slide (head 64, 2 KV heads, a 16-token window a short
    // prompt crosses), layer 5 is global (head 128, 1 KV head).
    let tiny = |experts| Shape {
        context_length: 4096,
        ..g4(
            base(6, 256, 4, 1, 128, 768, 2048, 1_000_000.0, true),
            64,
            2,
            16,
            experts,
        )
    };
    Some(match name {
        "tiny" => tiny(None),
        "tiny-moe" => tiny(Some(e(16, 4, 256))),
        // 8 layers, a global one every 4th (3 and 7); layers 4-7 read the
        // KV of layer 2 (sliding) or 3 (global), so a stage may start only
        // at layers 1 and 2 besides 0.
        "tiny-e" => e_series(
            Shape {
                n_layers: 8,
                ..tiny(None)
            },
            4,
            64,
            4,
        ),
        "e2b" => e_series(
            g4(
                base(35, 1536, 8, 1, 512, 6144, 262_144, 1_000_000.0, true),
                256,
                1,
                512,
                None,
            ),
            5,
            256,
            20,
        ),
        "e4b" => e_series(
            g4(
                base(42, 2560, 8, 2, 512, 10240, 262_144, 1_000_000.0, true),
                256,
                2,
                512,
                None,
            ),
            6,
            256,
            18,
        ),
        "26b-a4b" => g4(
            base(30, 2816, 16, 2, 512, 2112, 262_144, 1_000_000.0, true),
            256,
            8,
            1024,
            Some(e(128, 8, 704)),
        ),
        "31b" => g4(
            base(60, 5376, 32, 4, 512, 21504, 262_144, 1_000_000.0, true),
            256,
            16,
            1024,
            None,
        ),
        _ => return None,
    })
}
