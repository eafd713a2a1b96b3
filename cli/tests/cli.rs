//! The `strata` binary as a user runs it: real processes, real files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn strata(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .env("STRATA_LOG", "warn")
        .output()
        .expect("run strata")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "strata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn synth(dir: &Path, arch: &str, quant: &str, layers: &str) -> PathBuf {
    let path = dir.join(format!("{arch}-{quant}.gguf"));
    let p = path.to_str().unwrap();
    ok(&strata(&[
        "synth", "--arch", arch, "--preset", "tiny", "--quant", quant, "--layers", layers, "-o", p,
    ]));
    path
}

/// Eight greedy tokens after "hello" from `strata generate`.
fn generate_8(model: &str) -> String {
    ok(&strata(&[
        "generate",
        "-m",
        model,
        "-p",
        "hello",
        "-n",
        "8",
        "--temp",
        "0",
        "--ignore-eos",
        "-t",
        "2",
    ]))
}

#[test]
fn synth_models_of_every_architecture_inspect_and_generate() {
    let dir = tempfile::tempdir().unwrap();
    for arch in ["llama", "qwen2", "qwen3", "gemma3"] {
        let path = synth(dir.path(), arch, "Q4_K_M", "3");
        let p = path.to_str().unwrap();
        let info = ok(&strata(&["inspect", p]));
        assert!(info.contains(&format!("architecture:  {arch}")), "{info}");
        // llama.cpp loads synth models too (the GPU benchmarks compare on
        // them): it knows the pre-tokenizer name and wants string merges.
        let f = strata_model::GgufFile::open(&path).unwrap();
        assert_eq!(f.get_str("tokenizer.ggml.pre"), Some("gpt-2"));
        match f.metadata.get("tokenizer.ggml.merges") {
            Some(strata_model::MetaValue::Array(m)) => {
                assert!(
                    !m.is_empty()
                        && m.iter()
                            .all(|v| matches!(v, strata_model::MetaValue::String(_)))
                )
            }
            other => panic!("{arch}: merges {other:?}"),
        }
        assert!(info.contains("layers:        3"), "{info}");
        let text = generate_8(p);
        assert!(!text.is_empty(), "{arch}: no text generated");
    }
}

/// Qwen3.5 and Gemma 4 (issue 14): `strata inspect` reads their layers and
/// `strata generate` runs them (their tokens are held to llama.cpp's in
/// tests/tests/synth_reference.rs).
#[test]
fn issue14_architectures_inspect_and_generate() {
    let dir = tempfile::tempdir().unwrap();
    for (arch, preset, layers_line) in [
        ("qwen35", "tiny", "gated DeltaNet: conv 4"),
        ("qwen35moe", "tiny", "shared expert 256 wide"),
        ("gemma4", "tiny", "V = K, rope_freqs"),
        ("gemma4", "tiny-moe", "V = K, rope_freqs"),
        ("gemma4", "tiny-e", "reads the KV of layer 3"),
        ("qwen35", "tiny-mtp", "MTP blocks"),
    ] {
        let path = dir.path().join(format!("{arch}-{preset}.gguf"));
        let p = path.to_str().unwrap();
        ok(&strata(&[
            "synth", "--arch", arch, "--preset", preset, "--quant", "Q8_0", "-o", p,
        ]));
        let info = ok(&strata(&["inspect", p]));
        assert!(info.contains(&format!("architecture:  {arch}")), "{info}");
        assert!(info.contains(layers_line), "{arch}: {info}");
        let text = generate_8(p);
        assert!(!text.is_empty(), "{arch} {preset}: no text generated");
    }
}

#[test]
fn synth_models_of_every_quant_type_generate() {
    let dir = tempfile::tempdir().unwrap();
    for quant in [
        "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
        "Q5_K", "Q6_K",
    ] {
        let path = synth(dir.path(), "llama", quant, "2");
        let p = path.to_str().unwrap();
        let info = ok(&strata(&["inspect", p]));
        assert!(
            info.contains(&format!("  {quant:<6}")),
            "{quant} tensors not listed: {info}"
        );
        let a = ok(&strata(&[
            "generate",
            "-m",
            p,
            "-p",
            "abc",
            "-n",
            "6",
            "--temp",
            "0",
            "--ignore-eos",
        ]));
        let b = ok(&strata(&[
            "generate",
            "-m",
            p,
            "-p",
            "abc",
            "-n",
            "6",
            "--temp",
            "0",
            "--ignore-eos",
        ]));
        assert_eq!(a, b, "{quant}: greedy generation is deterministic");
    }
}

#[test]
fn generate_streams_llama_cpp_greedy_text() {
    let model = strata_tests::model_path(strata_tests::SMOLLM2);
    let reference = strata_tests::reference("smollm2-135m.json");
    let case = &reference["greedy"][0];
    let out = ok(&strata(&[
        "generate",
        "-m",
        model.to_str().unwrap(),
        "-p",
        case["prompt"].as_str().unwrap(),
        "-n",
        "32",
        "--temp",
        "0",
    ]));
    assert_eq!(out, case["content"].as_str().unwrap());
}

#[test]
fn malformed_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = synth(dir.path(), "llama", "Q8_0", "1");
    let bytes = std::fs::read(&good).unwrap();
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "truncated.gguf",
            bytes[..bytes.len() / 2].to_vec(),
            "outside",
        ),
        (
            "not-gguf.gguf",
            b"GGML this is not a model".to_vec(),
            "not a GGUF file",
        ),
        (
            "version.gguf",
            [&b"GGUF"[..], &99u32.to_le_bytes(), &bytes[8..]].concat(),
            "unsupported GGUF version 99",
        ),
    ];
    for (name, data, needle) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, data).unwrap();
        for cmd in ["inspect", "generate"] {
            let args: Vec<&str> = if cmd == "inspect" {
                vec!["inspect", path.to_str().unwrap()]
            } else {
                vec![
                    "generate",
                    "-m",
                    path.to_str().unwrap(),
                    "-p",
                    "x",
                    "-n",
                    "1",
                ]
            };
            let out = strata(&args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{cmd} {name}: {err}");
            assert!(
                err.contains(needle) && err.contains(name),
                "{cmd} {name}: {err}"
            );
            assert!(!err.contains("panicked"), "{cmd} {name}: {err}");
        }
    }
    let out = strata(&["inspect", dir.path().join("missing.gguf").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.gguf"));
}

/// `strata bench` on a CUDA device (the emulator here) with
/// STRATA_CUDA_PROFILE=1 ends with decode's device time per kernel.
#[test]
fn bench_profiles_decode_kernels_on_cuda() {
    let dir = tempfile::tempdir().unwrap();
    let path = synth(dir.path(), "llama", "Q4_K_M", "2");
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args([
            "bench",
            "-m",
            path.to_str().unwrap(),
            "-p",
            "8",
            "-n",
            "4",
            "-r",
            "1",
        ])
        .env("STRATA_LOG", "warn")
        .env("STRATA_CUDA_EMULATOR", "1")
        .env("STRATA_CUDA_PROFILE", "1")
        .output()
        .expect("run strata bench");
    let text = ok(&out);
    assert!(text.contains("| cuda |"), "{text}");
    let profile = text
        .split("device time per kernel")
        .nth(1)
        .unwrap_or_else(|| panic!("no kernel profile: {text}"));
    // (The synth model's heads are 64 wide: attention.cu's attend_64.)
    for kernel in ["mmvq_q4_k", "attend_64", "rms_norm", "quantize_act"] {
        assert!(
            profile.contains(&format!("| {kernel} |")),
            "{kernel} missing: {profile}"
        );
    }
    // 4 decode steps, one attention launch per layer each.
    assert!(profile.contains("| attend_64 | 8 |"), "{profile}");
}

/// `strata plan` without --devices or --worker plans over this machine:
/// its CPU when it has no GPU; with the CUDA emulator's one GPU and
/// `--cpu-stage`, both, named after the host.
#[test]
fn plan_without_devices_plans_over_this_machine() {
    let dir = tempfile::tempdir().unwrap();
    let model = synth(dir.path(), "llama", "Q8_0", "2");
    let model = model.to_str().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let host = host.trim();
    let emulated = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(args)
            .env("STRATA_LOG", "warn")
            .env("STRATA_CUDA_EMULATOR", "1")
            .output()
            .expect("run strata")
    };
    let plan = ok(&strata(&["plan", "-m", model, "-c", "512"]));
    assert!(plan.contains(&format!("{host}:cpu")), "{plan}");
    assert!(!plan.contains(":gpu"), "no GPU here: {plan}");
    let plan = ok(&emulated(&[
        "plan",
        "-m",
        model,
        "-c",
        "512",
        "--cpu-stage",
    ]));
    for name in ["gpu0", "cpu"] {
        assert!(plan.contains(&format!("{host}:{name}")), "{name}: {plan}");
    }
    let out = emulated(&["plan", "-m", model, "--gpus", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("GPU 1 is not here"),
        "{err}"
    );
    let out = strata(&["plan", "-m", model, "--gpus", "all", "--devices", "1GiB"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--devices"), "{err}");
}
