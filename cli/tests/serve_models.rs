//! `strata serve --config models.toml`: several models on demand on
//! embedded workers. A request loads its model (by name or alias), an
//! unknown one is a 404 in OpenAI's shape, a group keeps its members
//! loaded together while a model outside it swaps them out, `ttl` unloads
//! idle models, and a group that does not fit the pool's memory is refused
//! at start with the reason.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{eventually, get, model, post, EventStream, Proc, Worker, SMOLLM2};
use serde_json::{json, Value};

/// A `strata synth` tiny Llama: loads in a moment.
fn synth_tiny(dir: &Path) -> PathBuf {
    let path = dir.join("tiny.gguf");
    common::synth(
        &["--arch", "llama", "--preset", "tiny", "--quant", "Q4_K_M"],
        &path,
    );
    path
}

struct ModelServer {
    proc: Proc,
    base: String,
}

fn start(config: &Path, extra: &[&str]) -> ModelServer {
    let mut args = vec![
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let mut proc = Proc::spawn("serve", &args);
    let rest = proc.wait_for("serving on http://", Duration::from_secs(120));
    let addr = rest.trim().trim_end_matches("/v1").to_string();
    ModelServer {
        proc,
        base: format!("http://{addr}"),
    }
}

/// Model id → state, from `/v1/models`.
fn states(s: &ModelServer) -> Vec<(String, String)> {
    let (status, body) = get(&format!("{}/v1/models", s.base));
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().into(),
                m["state"].as_str().unwrap().into(),
            )
        })
        .collect()
}

fn state_of(s: &ModelServer, id: &str) -> String {
    states(s)
        .into_iter()
        .find(|(m, _)| m == id)
        .map(|(_, st)| st)
        .unwrap()
}

/// A short greedy completion of `model`; the response body.
fn complete(s: &ModelServer, model: &str) -> Value {
    let (status, body) = post(
        &format!("{}/v1/completions", s.base),
        &json!({"model": model, "prompt": "The capital of France is", "max_tokens": 3, "temperature": 0}),
    );
    assert_eq!(status, 200, "{model}: {body}");
    body
}

#[test]
fn models_load_on_demand_swap_by_group_and_unload_after_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = synth_tiny(dir.path());
    let config = dir.path().join("models.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[models.smollm2]
file = {smol:?}
aliases = ["smol"]
ctx_size = 256
parallel = 1
ttl = 6

[models.tiny]
file = "tiny.gguf"
ctx_size = 128
parallel = 1

[models.tiny-alone]
file = {tiny:?}
ctx_size = 128
parallel = 1

[groups.pair]
members = ["smollm2", "tiny"]
"#,
            smol = model(SMOLLM2).display().to_string(),
            tiny = tiny.display().to_string(),
        ),
    )
    .unwrap();
    let mut s = start(&config, &["-t", "1"]);
    let all = |st: &str| -> Vec<(String, String)> {
        ["smollm2", "tiny", "tiny-alone"]
            .iter()
            .map(|m| (m.to_string(), st.to_string()))
            .collect()
    };
    assert_eq!(
        states(&s),
        all("unloaded"),
        "nothing loaded before a request"
    );

    // An unknown model: 404 in OpenAI's shape, nothing loads.
    let (status, body) = post(
        &format!("{}/v1/chat/completions", s.base),
        &json!({"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "model_not_found", "{body}");
    assert_eq!(body["error"]["param"], "model", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("gpt-5"),
        "{body}"
    );

    // By alias: SmolLM2 loads, the request waits for it and is answered.
    let body = complete(&s, "smol");
    assert_eq!(body["model"], "smollm2", "answered as the model's name");
    s.proc
        .wait_for("model smollm2 loaded in", Duration::from_secs(5));
    assert!(
        s.proc
            .log
            .iter()
            .any(|l| l.contains("loading model smollm2")),
        "load progress in the log:\n{}",
        s.proc.log.join("\n")
    );
    assert_eq!(state_of(&s, "smollm2"), "ready");
    assert_eq!(state_of(&s, "tiny"), "unloaded");

    // Same group: tiny loads next to it.
    complete(&s, "tiny");
    assert_eq!(state_of(&s, "smollm2"), "ready");
    assert_eq!(state_of(&s, "tiny"), "ready");

    // No group with either: both are unloaded for it, but only once
    // SmolLM2 has finished the stream it is running.
    let mut stream = EventStream::open(
        &format!("{}/v1/completions", s.base),
        &json!({"model": "smollm2", "prompt": "Once upon a time", "max_tokens": 48,
                "ignore_eos": true, "temperature": 0, "stream": true}),
    );
    assert!(stream.next_data().is_some(), "the stream started");
    let base = s.base.clone();
    let swap_in = std::thread::spawn(move || {
        post(
            &format!("{base}/v1/completions"),
            &json!({"model": "tiny-alone", "prompt": "Hi", "max_tokens": 3}),
        )
    });
    let mut finish = None;
    while let Some(d) = stream.next_data() {
        assert!(!d.contains("\"error\""), "the running stream was cut: {d}");
        if let Ok(v) = serde_json::from_str::<Value>(&d) {
            finish = v["choices"][0]["finish_reason"]
                .as_str()
                .map(str::to_string)
                .or(finish);
        }
    }
    assert_eq!(
        finish.as_deref(),
        Some("length"),
        "the stream ran to its 48 tokens"
    );
    let (status, body) = swap_in.join().unwrap();
    assert_eq!(status, 200, "{body}");
    let now = states(&s);
    assert_eq!(
        now,
        vec![
            ("smollm2".to_string(), "unloaded".to_string()),
            ("tiny".into(), "unloaded".into()),
            ("tiny-alone".into(), "ready".into())
        ]
    );

    // SmolLM2 again (it swaps tiny-alone out), then its 6 s ttl unloads it.
    complete(&s, "smollm2");
    assert_eq!(state_of(&s, "tiny-alone"), "unloaded");
    assert_eq!(state_of(&s, "smollm2"), "ready");
    assert!(
        eventually(Duration::from_secs(20), || state_of(&s, "smollm2")
            == "unloaded"),
        "the ttl unloads an idle model: {:?}",
        states(&s)
    );
    s.proc.wait_for(
        "model smollm2 unloaded after 6 s idle (ttl)",
        Duration::from_secs(5),
    );
    // And a request loads it again.
    complete(&s, "smol");
    assert_eq!(state_of(&s, "smollm2"), "ready");
}

#[test]
fn a_group_that_does_not_fit_the_pool_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("models.toml");
    let smol = model(SMOLLM2).display().to_string();
    std::fs::write(
        &config,
        format!(
            r#"
[models.smol-a]
file = {smol:?}
ctx_size = 256
parallel = 1

[models.smol-b]
file = {smol:?}
ctx_size = 256
parallel = 1

[groups.both]
members = ["smol-a", "smol-b"]
"#
        ),
    )
    .unwrap();
    // Room for one SmolLM2 with its margin, not two.
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args([
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--mem-budget", MEM_FOR_ONE, "-t", "1"])
        .env("STRATA_LOG", "warn")
        .output()
        .expect("run strata serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused: {stderr}");
    assert!(
        stderr.contains(
            "group \"both\" does not fit on the pool at once: smol-b does not fit next to smol-a: "
        ),
        "{stderr}"
    );
    // The same file with the group's members alone serves.
    let single = dir.path().join("single.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &single,
        text.replace("[groups.both]\nmembers = [\"smol-a\", \"smol-b\"]\n", ""),
    )
    .unwrap();
    let s = start(&single, &["--mem-budget", MEM_FOR_ONE, "-t", "1"]);
    complete(&s, "smol-a");
    complete(&s, "smol-b");
}

/// What SmolLM2 (Q4_1, 256 tokens of context, one sequence) fits in, with
/// the planner's margin, while two copies do not.
const MEM_FOR_ONE: &str = "260MiB";

/// The addresses of a model's stages, from `/v1/pool`.
fn stage_addrs(s: &ModelServer, id: &str) -> Vec<String> {
    let (status, body) = get(&format!("{}/v1/pool", s.base));
    assert_eq!(status, 200, "{body}");
    let pool: Value = serde_json::from_str(&body).unwrap();
    let m = pool["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id)
        .unwrap();
    m["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| st["addr"].as_str().unwrap().to_string())
        .collect()
}

/// On `--worker`s a worker holds one model's stage: the second model of a
/// group loads on the worker the first left free, and the first keeps
/// serving (its worker is not unloaded under it).
#[test]
fn a_group_on_remote_workers_takes_workers_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = synth_tiny(dir.path());
    let workers = [Worker::start("400MiB", None), Worker::start("400MiB", None)];
    let config = dir.path().join("models.toml");
    std::fs::write(
        &config,
        format!(
            "[models.smollm2]\nfile = {smol:?}\nctx_size = 256\nparallel = 1\n\
             [models.tiny]\nfile = {tiny:?}\nctx_size = 128\nparallel = 1\n\
             [groups.pair]\nmembers = [\"smollm2\", \"tiny\"]\n",
            smol = model(SMOLLM2).display().to_string(),
            tiny = tiny.display().to_string(),
        ),
    )
    .unwrap();
    let token = common::token_file(dir.path());
    let s = start(
        &config,
        &[
            "--token-file",
            token.to_str().unwrap(),
            "--worker",
            &workers[0].spec,
            "--worker",
            &workers[1].spec,
        ],
    );
    let first = complete(&s, "smollm2");
    let smol_on = stage_addrs(&s, "smollm2");
    assert_eq!(
        smol_on.len(),
        1,
        "SmolLM2 fits one 400 MiB worker: {smol_on:?}"
    );
    complete(&s, "tiny");
    let tiny_on = stage_addrs(&s, "tiny");
    assert_eq!(tiny_on.len(), 1, "{tiny_on:?}");
    assert_ne!(smol_on, tiny_on, "each model on a worker of its own");
    assert_eq!(state_of(&s, "smollm2"), "ready");
    // SmolLM2's worker still holds it: no failover, the same greedy answer.
    let (_, pool) = get(&format!("{}/v1/pool", s.base));
    let pool: Value = serde_json::from_str(&pool).unwrap();
    assert_eq!(pool["models"][0]["id"], "smollm2");
    assert_eq!(pool["models"][0]["failovers"], 0, "{pool}");
    assert_eq!(
        complete(&s, "smollm2")["choices"][0]["text"],
        first["choices"][0]["text"]
    );
}
