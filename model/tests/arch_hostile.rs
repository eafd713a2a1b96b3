//! Metadata that lies about sizes gets an error naming the key, for every
//! architecture, before anything is sized by it (a per-layer table of 2^60
//! entries would abort the process).

use strata_model::arch::{Architecture, ModelSpec};
use strata_model::gguf::{GgufFile, GgufWriter, MetaValue};

/// A metadata-only GGUF of `arch` whose keys are sane but for `overrides`.
fn file(arch: Architecture, overrides: &[(&str, MetaValue)]) -> GgufFile {
    let name = arch.name();
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", MetaValue::String(name.into()));
    let mut keys: Vec<(String, MetaValue)> = [
        ("block_count", MetaValue::U32(2)),
        ("embedding_length", MetaValue::U32(64)),
        ("attention.head_count", MetaValue::U32(4)),
        ("attention.head_count_kv", MetaValue::U32(2)),
        ("feed_forward_length", MetaValue::U32(128)),
        ("context_length", MetaValue::U32(256)),
        ("vocab_size", MetaValue::U32(100)),
        ("attention.layer_norm_rms_epsilon", MetaValue::F32(1e-6)),
        ("attention.sliding_window", MetaValue::U32(16)),
        ("expert_count", MetaValue::U32(8)),
        ("expert_used_count", MetaValue::U32(2)),
        ("expert_feed_forward_length", MetaValue::U32(32)),
    ]
    .into_iter()
    // Experts only for the MoE architectures (a dense file has no such keys).
    .chain(arch_keys(arch))
    .filter(|(k, _)| {
        !k.starts_with("expert")
            || matches!(
                arch,
                Architecture::Qwen3Moe | Architecture::GptOss | Architecture::Qwen35Moe
            )
    })
    .map(|(k, v)| (format!("{name}.{k}"), v))
    .collect();
    for (k, v) in overrides {
        let k = format!("{name}.{k}");
        keys.retain(|(have, _)| *have != k);
        keys.push((k, v.clone()));
    }
    for (k, v) in keys {
        w.add_metadata(k, v);
    }
    let bytes = w.to_bytes(|_, _, _| Ok(())).expect("gguf bytes");
    GgufFile::from_bytes("hostile.gguf", &bytes).expect("parses")
}

/// The keys llama.cpp requires of the newer architectures.
fn arch_keys(arch: Architecture) -> Vec<(&'static str, MetaValue)> {
    let ints = |v: &[i32]| MetaValue::Array(v.iter().map(|&x| MetaValue::I32(x)).collect());
    match arch {
        // One DeltaNet layer, then one attention layer (head dim 64/4 = 16,
        // all 16 dims rotated in sections of 3 + 3 + 2 pairs).
        Architecture::Qwen35 | Architecture::Qwen35Moe => vec![
            ("ssm.conv_kernel", MetaValue::U32(4)),
            ("ssm.state_size", MetaValue::U32(16)),
            ("ssm.group_count", MetaValue::U32(2)),
            ("ssm.time_step_rank", MetaValue::U32(4)),
            ("ssm.inner_size", MetaValue::U32(64)),
            ("full_attention_interval", MetaValue::U32(2)),
            ("rope.dimension_sections", ints(&[3, 3, 2, 0])),
            ("expert_shared_feed_forward_length", MetaValue::U32(32)),
        ],
        Architecture::Gemma4 => vec![
            (
                "attention.sliding_window_pattern",
                MetaValue::Array(vec![MetaValue::Bool(true), MetaValue::Bool(false)]),
            ),
            ("attention.key_length_swa", MetaValue::U32(16)),
            ("attention.value_length_swa", MetaValue::U32(16)),
            ("embedding_length_per_layer_input", MetaValue::U32(0)),
        ],
        _ => Vec::new(),
    }
}

fn refused(arch: Architecture, overrides: &[(&str, MetaValue)], needle: &str) {
    match ModelSpec::from_gguf(&file(arch, overrides)) {
        Ok(spec) => panic!("{arch}: {overrides:?} accepted: {spec:?}"),
        Err(e) => assert!(
            e.to_string().contains(needle),
            "{arch}: {overrides:?}: error {e} does not name {needle:?}"
        ),
    }
}

#[test]
fn every_architecture_reads_the_sane_file() {
    for arch in Architecture::ALL {
        let spec = ModelSpec::from_gguf(&file(arch, &[])).unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert_eq!(spec.layers.len(), 2, "{arch}");
    }
}

#[test]
fn lying_sizes_are_errors_for_every_architecture() {
    for arch in Architecture::ALL {
        refused(
            arch,
            &[("block_count", MetaValue::U64(1 << 60))],
            "block_count",
        );
        refused(
            arch,
            &[("attention.head_count", MetaValue::U64(1 << 40))],
            "head_count",
        );
        refused(
            arch,
            &[("attention.head_count_kv", MetaValue::U32(3))],
            "KV heads",
        );
        refused(
            arch,
            &[("context_length", MetaValue::U64(1 << 62))],
            "context_length",
        );
        // Period 0 is legal (every layer slides); a huge one is just global.
        let _ = ModelSpec::from_gguf(&file(
            arch,
            &[("attention.sliding_window_pattern", MetaValue::U64(u64::MAX))],
        ));
    }
    for arch in [Architecture::Qwen3Moe, Architecture::GptOss] {
        refused(arch, &[("expert_used_count", MetaValue::U32(9))], "experts");
        refused(
            arch,
            &[("expert_count", MetaValue::U64(1 << 40))],
            "expert_count",
        );
        refused(
            arch,
            &[("expert_feed_forward_length", MetaValue::U64(1 << 40))],
            "feed_forward_length",
        );
    }
}
