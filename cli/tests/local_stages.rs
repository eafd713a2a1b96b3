//! `strata serve --devices cpu,cpu,cpu`: three stages in one process, planned
//! like three workers, with hidden states handed between them in memory.
//! Greedy output must equal the one-stage server's, and the stages must say
//! they sent their frames on in memory, not over the network. And one
//! command for a box: `--gpus all --cpu-stage`, every GPU (here the CUDA
//! emulator's one) and the host's CPU as stages. And a box that loses one
//! of its (emulated) GPUs serves on with the others.

mod common;

use common::streams::{same_up_to_near_tie, steps_of, Step, Streams};
use common::{model, post, Server, SMOLLM2};
use serde_json::{json, Value};

/// Context and sequences small enough that the split budget (150 MiB a
/// stage) forces SmolLM2's 30 layers onto all three stages.
const SMALL: [&str; 4] = ["-c", "512", "-n", "2"];

fn greedy(server: &Server, prompt: &str, n: usize) -> (String, Value) {
    let (status, body) = post(
        &format!("{}/v1/completions", server.base),
        &json!({"prompt": prompt, "max_tokens": n, "temperature": 0, "logprobs": 1}),
    );
    assert_eq!(status, 200, "{body}");
    let text = body["choices"][0]["text"].as_str().unwrap().to_string();
    (text, body["choices"][0]["logprobs"]["tokens"].clone())
}

fn pool_stages(server: &Server) -> Vec<Value> {
    let (status, body) = common::get(&format!("{}/v1/pool", server.base));
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["models"][0]["stages"].as_array().unwrap().clone()
}

#[test]
fn three_local_stages_serve_smollm2_like_one_stage() {
    let smol = model(SMOLLM2);
    let one = Server::start(&smol, &SMALL);
    let mut args = SMALL.to_vec();
    args.extend(["--devices", "cpu,cpu,cpu", "--mem-budget", "450MiB"]);
    let three = Server::start(&smol, &args);

    // /health names three stages, contiguous over the model's 30 layers.
    let (status, body) = common::get(&format!("{}/health", three.base));
    assert_eq!(status, 200, "{body}");
    let health: Value = serde_json::from_str(&body).unwrap();
    let labels = health["stages"].as_array().unwrap();
    assert_eq!(labels.len(), 3, "three stages: {labels:?}");
    let stages = pool_stages(&three);
    eprintln!("placement: {labels:?}");
    assert_eq!(stages.len(), 3);
    let mut next_layer = 0;
    for s in &stages {
        assert_eq!(s["first_layer"], next_layer, "contiguous: {stages:?}");
        next_layer = s["end_layer"].as_u64().unwrap();
        assert!(next_layer > s["first_layer"].as_u64().unwrap());
        assert_eq!(s["backend"], "cpu");
    }
    assert_eq!(next_layer, 30, "all layers placed: {stages:?}");

    for prompt in ["The capital of France is", "def fibonacci(n):"] {
        let (expected, expected_tokens) = greedy(&one, prompt, 24);
        let (text, tokens) = greedy(&three, prompt, 24);
        assert_eq!(text, expected, "three local stages vs one, {prompt:?}");
        assert_eq!(tokens, expected_tokens);
    }

    // Every batch went from stage 0 to 1 and 1 to 2 in memory; the last
    // stage sends none on.
    let (status, metrics) = common::get(&format!("{}/metrics", three.base));
    assert_eq!(status, 200);
    let batches: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("strata_batches_total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no strata_batches_total: {metrics}"));
    assert!(batches > 0);
    let stages = pool_stages(&three);
    for (i, s) in stages.iter().enumerate() {
        assert_eq!(s["frames_sent_remote"], 0, "stage {i}: {s}");
        let local = s["frames_sent_local"].as_u64().unwrap();
        let expected = if i < 2 { batches } else { 0 };
        assert_eq!(local, expected, "stage {i} of {batches} batches: {s}");
    }

    // /metrics names the three stages too, with the same ranges and frames.
    let sample = |name: &str, stage: usize, extra: &str| -> u64 {
        let prefix = format!("strata_{name}{{stage=\"{stage}\",");
        metrics
            .lines()
            .find(|l| l.starts_with(&prefix) && l.contains(extra))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {prefix}..{extra} in {metrics}")) as u64
    };
    for (i, s) in stages.iter().enumerate() {
        assert_eq!(sample("stage_up", i, ""), 1, "stage {i}");
        assert_eq!(sample("stage_first_layer", i, ""), s["first_layer"]);
        assert_eq!(sample("stage_end_layer", i, ""), s["end_layer"]);
        let local = sample("stage_frames_sent_total", i, "path=\"local\"");
        assert_eq!(local, if i < 2 { batches } else { 0 }, "stage {i}");
        assert_eq!(sample("stage_frames_sent_total", i, "path=\"remote\""), 0);
    }
    assert!(!metrics.contains("stage=\"3\""), "three stages: {metrics}");
}

/// The emulated GPU holds 350 MiB (about 70 usable past the planner's
/// margin) and the CPU stage 170 MiB: SmolLM2 needs both.
#[test]
fn every_gpu_and_a_cpu_stage_serve_smollm2_like_one_stage() {
    let smol = model(SMOLLM2);
    let small = ["-c", "512", "-n", "1"];
    let one = Server::start(&smol, &small);
    let mut args = small.to_vec();
    args.extend(["--gpus", "all", "--cpu-stage", "--mem-budget", "170MiB"]);
    let emulator = [
        ("STRATA_CUDA_EMULATOR", "1"),
        ("STRATA_CUDA_EMU_MEM_MIB", "350"),
    ];
    let both = Server::start_with_env(&smol, &args, &emulator);
    assert!(
        both.proc
            .log
            .iter()
            .any(|l| l.contains("--cpu-stage: the host's RAM is one more stage")),
        "a warning says what a CPU stage costs: {:?}",
        both.proc.log
    );
    let stages = pool_stages(&both);
    let mut backends: Vec<&str> = stages
        .iter()
        .map(|s| s["backend"].as_str().unwrap())
        .collect();
    backends.sort();
    assert_eq!(backends, ["cpu", "cuda"], "{stages:?}");
    // The CUDA kernels are not the CPU's bit for bit (they quantize
    // activations otherwise; docs/cuda.md), and how many layers the GPU
    // takes moves with the measured speeds: the same tokens up to the CPU
    // run's first near-tie, log-probs within 0.5 until then, as
    // tests/tests/cuda_greedy.rs holds the CUDA backend (measured there on
    // SmolLM2: 0.21 at worst).
    let prompt = "The capital of France is";
    let expected = top2(&one, prompt, 8);
    let got = top2(&both, prompt, 8);
    let sure = same_up_to_near_tie(&expected, &got, 0.5);
    assert!(sure >= 3, "too few sure tokens to compare: {expected:?}");
}

/// Each greedy token of `prompt` with its log-prob and the runner-up's.
fn top2(server: &Server, prompt: &str, n: usize) -> Vec<Step> {
    let (status, body) = post(
        &format!("{}/v1/completions", server.base),
        &json!({"prompt": prompt, "max_tokens": n, "temperature": 0, "logprobs": 2}),
    );
    assert_eq!(status, 200, "{body}");
    steps_of(&body["choices"][0]["logprobs"])
}

#[test]
fn devices_refuses_bad_entries_and_remote_workers() {
    let smol = model(SMOLLM2);
    let smol = smol.to_str().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(args)
            .env("STRATA_LOG", "warn")
            .output()
            .unwrap()
    };
    let out = run(&["serve", "-m", smol, "--devices", "cpu,tpu"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cuda:N"));
    let out = run(&[
        "serve",
        "-m",
        smol,
        "--devices",
        "cpu,cpu",
        "--worker",
        "127.0.0.1:1",
        "--token",
        "t",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--devices"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A mistyped emulator setting stops the worker with the setting named,
/// rather than giving it a GPU of 0 MiB.
#[test]
fn a_mistyped_emulated_gpu_memory_is_refused() {
    let state = common::worker_state_dir();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args([
            "worker",
            "--listen",
            "127.0.0.1:0",
            "--gpus",
            "all",
            "--token",
            "abcdefabcdefabcdef",
        ])
        .arg("--state-dir")
        .arg(&state)
        .envs([
            ("STRATA_CUDA_EMULATOR", "1"),
            ("STRATA_CUDA_EMU_DEVICES", "2"),
            ("STRATA_CUDA_EMU_MEM_MIB", "276,x"),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("STRATA_CUDA_EMU_MEM_MIB=276,x: not MiB figures"),
        "{err}"
    );
}

/// The device ordinal of a CUDA stage, from its device name ("..., device N, sm_XY").
fn gpu_of(stage: &Value) -> u32 {
    let name = stage["device_name"].as_str().unwrap();
    let (_, rest) = name
        .split_once("device ")
        .unwrap_or_else(|| panic!("no ordinal in {name:?}"));
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no ordinal in {name:?}"))
}

/// A 12-layer mistral3 synth (a random-weight llama's logits are all near
/// ties; mistral3's are not), in a folder of its own that workers read.
fn tiny_model() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mistral3-tiny12.gguf");
    let args = [
        "--arch", "mistral3", "--preset", "tiny", "--quant", "Q8_0", "--layers", "12",
    ];
    common::synth(&args, &path);
    (dir, path)
}

/// `strata worker --gpus all` over the emulated GPUs `env` describes.
fn box_worker(model_dir: &std::path::Path, env: &[(&str, &str)]) -> common::Worker {
    let state = common::worker_state_dir();
    common::Worker::start_in(
        "127.0.0.1:0",
        "1GiB",
        Some(model_dir),
        env,
        &state,
        &["--gpus", "all"],
    )
}

/// A box of four GPUs (the CUDA emulator's, 276 MiB each; one `strata
/// worker --gpus all`) serving a model that needs three of them. A GPU of
/// the middle stage is lost mid-request (every launch on it fails from then
/// on, as after an Xid): it takes out its own stage, not the box. The
/// coordinator re-plans over the spare GPU and the two that still work,
/// every stream finishes, with the tokens it gets undisturbed, and the lost
/// GPU is out of the pool.
#[test]
fn a_lost_gpu_takes_out_its_own_stage_and_the_box_serves_on() {
    let (dir, model_path) = tiny_model();
    let pulled = dir.path().join("pulled-gpus");
    let pulled_env = pulled.to_str().unwrap().to_string();
    let env = [
        ("STRATA_CUDA_EMULATOR", "1"),
        ("STRATA_CUDA_EMU_DEVICES", "4"),
        ("STRATA_CUDA_EMU_MEM_MIB", "276"),
        ("STRATA_CUDA_EMU_FAIL_FILE", pulled_env.as_str()),
    ];
    let mut worker = box_worker(dir.path(), &env);
    let mut args = vec!["-c", "256", "-n", "4", "-b", "32", "--stage-timeout", "20"];
    args.extend(["--worker", worker.spec.as_str()]);
    let server = Server::start(&model_path, &args);
    let before = pool_stages(&server);
    assert_eq!(before.len(), 3, "three GPUs used, one spare: {before:?}");
    assert!(before.iter().all(|s| s["backend"] == "cuda"), "{before:?}");
    let used: Vec<u32> = before.iter().map(gpu_of).collect();

    const PROMPTS: [&str; 4] = [
        "Once upon a time",
        "The capital of France is",
        "1 2 3 4",
        "def f(x):",
    ];
    const N: usize = 32;
    let expected = Streams::start_with_top2(&server, &PROMPTS, N).finish_steps();

    let streams = Streams::start_with_top2(&server, &PROMPTS, N);
    streams.wait_for_tokens(3);
    std::fs::write(&pulled, format!("{}\n", used[1])).unwrap();
    let at_loss = streams.seen();
    let got = streams.finish_steps();
    // The replay computes the history as a prompt (other kernels than a
    // decode step's), so the same tokens up to the undisturbed run's first
    // near-tie, each log-prob within 0.01.
    let mut past_loss = 0;
    for ((want, have), lost_at) in expected.iter().zip(&got).zip(&at_loss) {
        assert_eq!(have.len(), N, "{have:?}");
        // (+2: a token or two in flight were computed before the loss.)
        past_loss += same_up_to_near_tie(want, have, 0.01).saturating_sub(lost_at + 2);
    }
    eprintln!("{past_loss} tokens compared after the GPU was lost, before a near-tie");
    assert!(
        past_loss >= 8,
        "too few sure tokens after the loss to compare: {expected:?}"
    );

    let after = pool_stages(&server);
    let now: Vec<u32> = after.iter().map(gpu_of).collect();
    assert_eq!(
        after.len(),
        3,
        "the spare took the lost GPU's place: {after:?}"
    );
    assert!(
        !now.contains(&used[1]),
        "GPU {} was lost, yet serves: {now:?}",
        used[1]
    );
    let spare = (0..4).find(|g| !used.contains(g)).unwrap();
    assert!(
        now.contains(&spare),
        "the spare GPU {spare} serves: {now:?}"
    );
    // The log says which GPU failed.
    let failed = worker.proc.wait_for(
        "the compute device failed",
        std::time::Duration::from_secs(10),
    );
    assert!(
        failed.contains(&format!("device {} is lost", used[1])),
        "{failed}"
    );
    let (status, body) = post(
        &format!("{}/v1/completions", server.base),
        &json!({"prompt": PROMPTS[0], "max_tokens": N, "temperature": 0, "ignore_eos": true}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], N);
}

/// `strata worker --gpus all` on a box of three (emulated) GPUs that the
/// model needs all of: the coordinator, given the first stage's address
/// only, finds the other two, plans the three, and the box hands hidden
/// states between them in memory. Tokens as one GPU gives them. The first
/// address is given twice, as `127.0.0.1` and as `localhost`: each stage
/// is still planned once (counted twice, its memory would be too).
#[test]
fn one_worker_serves_every_gpu_of_its_box() {
    let (dir, model_path) = tiny_model();
    let serve_args = ["-c", "256", "-n", "4", "-b", "32"];
    let one_gpu = [
        ("STRATA_CUDA_EMULATOR", "1"),
        ("STRATA_CUDA_EMU_MEM_MIB", "400"),
    ];
    let one = Server::start_with_env(&model_path, &serve_args, &one_gpu);

    let three_gpus = [
        ("STRATA_CUDA_EMULATOR", "1"),
        ("STRATA_CUDA_EMU_DEVICES", "3"),
        ("STRATA_CUDA_EMU_MEM_MIB", "276"),
    ];
    let worker = box_worker(dir.path(), &three_gpus);
    let again = worker.spec.replacen("127.0.0.1:", "localhost:", 1);
    let mut args = serve_args.to_vec();
    args.extend(["--worker", worker.spec.as_str(), "--worker", again.as_str()]);
    let mut boxed = Server::start(&model_path, &args);
    let twice = boxed.proc.logged(
        "is the stage already reached at",
        std::time::Duration::from_secs(10),
    );
    assert!(twice.contains("127.0.0.1:"), "{twice}");

    let stages = pool_stages(&boxed);
    assert_eq!(stages.len(), 3, "the box's three GPUs: {stages:?}");
    let mut gpus: Vec<u32> = stages.iter().map(gpu_of).collect();
    gpus.sort();
    assert_eq!(gpus, [0, 1, 2], "{stages:?}");
    let host = |s: &Value| {
        s["addr"]
            .as_str()
            .unwrap()
            .rsplit_once(':')
            .unwrap()
            .0
            .to_string()
    };
    assert!(stages.iter().all(|s| host(s) == "127.0.0.1"), "{stages:?}");

    let mut sure = 0;
    for prompt in ["Once upon a time", "The capital of France is", "1 2 3 4"] {
        sure += same_up_to_near_tie(&top2(&one, prompt, 16), &top2(&boxed, prompt, 16), 0.01);
    }
    eprintln!("{sure} tokens compared before a near-tie");
    assert!(sure >= 8, "too few sure tokens to compare");

    // Stages 0 and 1 sent every frame on in memory, to their box-mate.
    let stages = pool_stages(&boxed);
    for s in &stages[..2] {
        assert!(s["frames_sent_local"].as_u64().unwrap() > 0, "{stages:?}");
        assert_eq!(s["frames_sent_remote"], 0, "{stages:?}");
    }
}
