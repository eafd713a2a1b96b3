//! One model over three `strata worker` processes and a `strata serve`
//! coordinator on loopback: the budgets force an uneven three-way split,
//! and greedy output must equal a single-process run and llama.cpp's.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{model, post, reference, EventStream, Server, Worker, GEMMA3, SMOLLM2};
use serde_json::{json, Value};

/// llama.cpp's greedy text up to its first near tie (top-2 log-probs within
/// `near_tie`): past it, a last-bit difference may pick the other token.
fn reference_prefix(r: &Value, case: usize, near_tie: f64) -> (String, String, usize) {
    let g = &r["greedy"][case];
    let steps = g["steps"].as_array().expect("steps");
    let sure = steps
        .iter()
        .position(|s| {
            // No top-5 (llama-server gives none for a partial UTF-8 piece):
            // nothing to judge the tie by, so the sure part ends there.
            let Some(top) = s["top"].as_array() else {
                return true;
            };
            top[0][1].as_f64().unwrap() - top[1][1].as_f64().unwrap() < near_tie
        })
        .unwrap_or(steps.len());
    let text: String = steps[..sure]
        .iter()
        .map(|s| s["piece"].as_str().map(str::to_string).unwrap_or_default())
        .collect();
    (g["prompt"].as_str().unwrap().to_string(), text, steps.len())
}

fn stage_ranges(server: &Server) -> Vec<String> {
    let (status, body) = common::get(&format!("{}/health", server.base));
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// `whole_reference`: the model's greedy text matches llama.cpp's past its
/// near-ties too (SmolLM2 does in one process, `cli.rs`; Gemma-3 flips at one).
fn run_three_workers(file: &str, reference_name: &str, budgets: [&str; 3], whole_reference: bool) {
    run_three_workers_on(
        &model(file),
        &reference(reference_name),
        budgets,
        whole_reference,
        0.5,
        1,
    );
}

/// `near_tie`: the top-2 log-prob gap under which the text may leave
/// llama.cpp's (random-weight models have flat distributions, so their
/// callers pass twice the 0.05 log-prob contract); `min_sure`: how many
/// bytes of llama.cpp's first text must come before such a tie, so that
/// the comparison says something.
fn run_three_workers_on(
    model_path: &Path,
    r: &Value,
    budgets: [&str; 3],
    whole_reference: bool,
    near_tie: f64,
    min_sure: usize,
) -> Vec<String> {
    run_three_workers_kv(
        model_path,
        r,
        budgets,
        whole_reference,
        near_tie,
        min_sure,
        "f16",
        "grpc",
    )
}

/// [`run_three_workers_on`] with K and V cached as `kv_type`
/// (`--cache-type-k/-v` on `plan`, `serve` and the one-process run), and
/// the data plane over `transport` (`serve --transport`).
#[allow(clippy::too_many_arguments)]
fn run_three_workers_kv(
    model_path: &Path,
    r: &Value,
    budgets: [&str; 3],
    whole_reference: bool,
    near_tie: f64,
    min_sure: usize,
    kv_type: &str,
    transport: &str,
) -> Vec<String> {
    let model_path = model_path.to_path_buf();
    let file = model_path.file_name().unwrap();
    // One worker reads its own copy; the others get their slices pushed.
    let model_dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&model_path, model_dir.path().join(file)).unwrap();
    let workers = [
        Worker::start(budgets[0], Some(model_dir.path())),
        Worker::start(budgets[1], None),
        Worker::start(budgets[2], None),
    ];
    // `strata plan --worker` asks the same workers and shows the same split.
    let token_dir = tempfile::tempdir().unwrap();
    let token = common::token_file(token_dir.path());
    let mut plan_args = vec![
        "plan",
        "-m",
        model_path.to_str().unwrap(),
        "--token-file",
        token.to_str().unwrap(),
    ];
    plan_args.extend(["-c", "512", "--parallel", "2"]);
    plan_args.extend(["--cache-type-k", kv_type, "--cache-type-v", kv_type]);
    for w in &workers {
        plan_args.extend(["--worker", w.spec.as_str()]);
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(&plan_args)
        .env("STRATA_LOG", "warn")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.lines().any(|l| l.starts_with("2 ")) && !table.contains("unused"),
        "three stages planned: {table}"
    );

    let mut args = vec![
        "-c",
        "512",
        "-n",
        "2",
        "--act-dtype",
        "f32",
        "--transport",
        transport,
    ];
    args.extend(["--cache-type-k", kv_type, "--cache-type-v", kv_type]);
    for w in &workers {
        args.extend(["--worker", w.spec.as_str()]);
    }
    let server = Server::start(&model_path, &args);
    // The coordinator reaches each stage's data plane (stage 0's data
    // stream, every reply line) over what was asked for.
    let over_quic = server
        .proc
        .log
        .iter()
        .filter(|l| l.contains("data plane of") && l.contains("over QUIC"))
        .count();
    assert_eq!(
        over_quic,
        if transport == "quic" { 3 } else { 0 },
        "stages whose data plane the coordinator reached over QUIC"
    );
    // ... or over TCP links: stage 0's data stream and three reply lines.
    let over_tcp = server
        .proc
        .log
        .iter()
        .filter(|l| l.contains("over a TCP link"))
        .count();
    assert_eq!(
        over_tcp,
        if transport == "tcp" { 4 } else { 0 },
        "the coordinator's TCP links"
    );

    let stages = stage_ranges(&server);
    eprintln!("placement: {stages:?}");
    assert_eq!(
        stages.len(),
        3,
        "budgets must force three stages: {stages:?}"
    );
    assert!(
        stages
            .iter()
            .all(|s| s.contains(&format!("({kv_type} KV)"))),
        "every stage holds {kv_type} KV: {stages:?}"
    );
    let sizes: Vec<usize> = stages
        .iter()
        .map(|s| {
            let r = s.rsplit(' ').next().unwrap();
            let (a, b) = r.split_once("..").unwrap();
            b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap()
        })
        .collect();
    assert!(
        sizes.iter().any(|&n| n != sizes[0]),
        "the split should be uneven: {stages:?}"
    );

    let (prompt, sure_prefix, n) = reference_prefix(r, 0, near_tie);
    assert!(
        sure_prefix.len() >= min_sure,
        "llama.cpp's first prompt must give a few sure tokens to compare: {sure_prefix:?}"
    );
    let expected = common::single_process_kv(&model_path, &prompt, n, false, kv_type);
    let (status, body) = post(
        &format!("{}/v1/completions", server.base),
        &json!({"prompt": prompt, "max_tokens": n, "temperature": 0, "logprobs": 2}),
    );
    assert_eq!(status, 200, "{body}");
    let text = body["choices"][0]["text"].as_str().unwrap();
    assert_eq!(text, expected, "three workers vs one process");
    assert!(
        text.starts_with(&sure_prefix),
        "vs llama.cpp: {text:?} does not start with {sure_prefix:?}"
    );
    if whole_reference {
        assert_eq!(
            text,
            r["greedy"][0]["content"].as_str().unwrap(),
            "vs llama.cpp's whole greedy text"
        );
    }
    assert_eq!(body["usage"]["completion_tokens"], n);
    assert_eq!(
        body["choices"][0]["logprobs"]["tokens"]
            .as_array()
            .unwrap()
            .len(),
        n
    );

    // Every other reference prompt, sent together: one process's text too.
    let cases = r["greedy"].as_array().unwrap().len();
    let replies: Vec<_> = (1..cases)
        .map(|case| {
            let (prompt, sure_prefix, n) = reference_prefix(r, case, near_tie);
            let url = format!("{}/v1/completions", server.base);
            let thread = std::thread::spawn(move || {
                post(
                    &url,
                    &json!({"prompt": prompt, "max_tokens": n, "temperature": 0}),
                )
            });
            (case, sure_prefix, n, thread)
        })
        .collect();
    for (case, sure_prefix, n, thread) in replies {
        let (status, body) = thread.join().unwrap();
        assert_eq!(status, 200, "{body}");
        let prompt = r["greedy"][case]["prompt"].as_str().unwrap();
        let text = body["choices"][0]["text"].as_str().unwrap();
        let expected = common::single_process_kv(&model_path, prompt, n, false, kv_type);
        assert_eq!(text, expected, "three workers vs one process on {prompt:?}");
        assert!(
            text.starts_with(&sure_prefix),
            "vs llama.cpp on {prompt:?}: {text:?} does not start with {sure_prefix:?}"
        );
    }

    // Separate processes: the two stages before the last sent every frame
    // on over the network, none in memory.
    let sent: Vec<(u64, u64)> = workers
        .iter()
        .map(|w| {
            let h = w.health();
            (h.frames_sent_remote, h.frames_sent_local)
        })
        .collect();
    assert_eq!(
        sent.iter()
            .filter(|(remote, local)| *remote > 0 && *local == 0)
            .count(),
        2,
        "(over the network, in memory) per worker: {sent:?}"
    );
    // ... and over QUIC, or written by the compute thread on its TCP
    // link, exactly when asked for.
    for w in &workers {
        let h = w.health();
        let want = |t: &str| {
            if transport == t {
                h.frames_sent_remote
            } else {
                0
            }
        };
        assert_eq!(h.frames_sent_quic, want("quic"), "{}: {h:?}", w.addr);
        assert_eq!(h.frames_sent_tcp, want("tcp"), "{}: {h:?}", w.addr);
    }

    // Every stage holds the sequence's KV only while it runs (then only the
    // full blocks the prefix cache keeps); a client that drops its stream
    // frees its blocks on all three.
    let only_kept = |h: &strata_proto::v1::HealthReply| {
        h.live_sequences == 0 && h.kv_blocks_used == h.kv_blocks_cached
    };
    for w in &workers {
        assert!(
            common::eventually(Duration::from_secs(10), || only_kept(&w.health())),
            "finished sequence not freed: {:?}",
            w.health()
        );
    }
    let mut stream = EventStream::open(
        &format!("{}/v1/completions", server.base),
        &json!({"prompt": "Once upon a time", "max_tokens": 400, "temperature": 0, "stream": true}),
    );
    for _ in 0..3 {
        stream.next_data().expect("a chunk");
    }
    for w in &workers {
        let h = w.health();
        assert_eq!(
            h.live_sequences, 1,
            "{}: the live sequence holds KV",
            w.addr
        );
        assert!(h.kv_blocks_used > h.kv_blocks_cached, "{h:?}");
        // A stage with recurrent layers (Qwen3.5) holds one state slot.
        assert_eq!(
            h.state_slots_used,
            u64::from(h.state_slots > 0),
            "{}: {h:?}",
            w.addr
        );
    }
    drop(stream);
    for w in &workers {
        assert!(
            common::eventually(Duration::from_secs(20), || {
                let h = w.health();
                only_kept(&h) && h.state_slots_used == 0
            }),
            "{}: the dropped stream's blocks were not freed: {:?}",
            w.addr,
            w.health()
        );
    }
    stages
}

#[test]
fn three_workers_serve_smollm2_token_for_token() {
    run_three_workers(
        SMOLLM2,
        "smollm2-135m",
        ["150MiB", "125MiB", "120MiB"],
        true,
    );
}

/// `--cache-type-k q8_0 --cache-type-v q8_0`: every stage caches q8_0
/// K/V, and the pool gives llama.cpp's q8_0-KV tokens (`llama-server -ctk
/// q8_0 -ctv q8_0 -fa on`), the long prompt's too. The hops go over QUIC
/// (`--transport quic`): the same tokens, every frame on QUIC.
#[test]
fn three_workers_serve_smollm2_kv_q8_0_over_quic_token_for_token() {
    run_three_workers_kv(
        &model(SMOLLM2),
        &reference("smollm2-135m-kv-q8_0"),
        ["146MiB", "120MiB", "116MiB"],
        true,
        0.5,
        1,
        "q8_0",
        "quic",
    );
}

#[test]
fn three_workers_serve_gemma3_token_for_token() {
    run_three_workers(GEMMA3, "gemma3-270m", ["285MiB", "295MiB", "140MiB"], false);
}

// Other budgets, another split (the placement is printed; on this machine
// 0..14, 14..27, 27..30 against 0..2, 2..17, 17..30 above, as each worker's
// measured speed weighs in): the same text again. The hops between workers
// go on the compute threads' own TCP links (`--transport tcp`): every frame
// written there, releases after them.
#[test]
fn three_workers_serve_smollm2_token_for_token_on_another_split_over_tcp_links() {
    run_three_workers_kv(
        &model(SMOLLM2),
        &reference("smollm2-135m"),
        ["120MiB", "120MiB", "160MiB"],
        true,
        0.5,
        1,
        "f16",
        "tcp",
    );
}

// Here 0..1, 1..16, 16..18 against 0..3, 3..14, 14..18 above.
#[test]
fn three_workers_serve_gemma3_token_for_token_on_another_split() {
    run_three_workers(GEMMA3, "gemma3-270m", ["320MiB", "160MiB", "280MiB"], false);
}

/// A mixture-of-experts model (`strata synth` qwen3moe, 8 experts, 2 per
/// token), checked against llama.cpp's greedy tokens on the same file.
#[test]
fn three_workers_serve_qwen3moe_synth_token_for_token() {
    let (_dir, model_path, r) = common::synth_reference("synth-qwen3moe-q8_0");
    run_three_workers_on(&model_path, &r, ["80MiB", "84MiB", "79MiB"], false, 0.1, 8);
}

/// Qwen3.5 (DeltaNet layers 0-2, gated attention at 3): the budgets put a
/// stage boundary between DeltaNet layer 2 and attention layer 3, and every
/// stage frees its recurrent state with its KV when a stream is dropped.
/// Then Qwen3.5-MoE (its shared expert) over three workers, wherever the
/// measured speeds place it; its random weights give near-ties from the
/// first tokens (llama.cpp's log-probabilities are held to 0.05 in
/// tests/tests/synth_reference.rs).
#[test]
fn three_workers_serve_qwen35_synth_token_for_token() {
    let (_dir, model_path, r) = common::synth_reference("synth-qwen35-q8_0");
    // Budgets that fit one or two layers each; where the boundaries fall
    // (both DeltaNet layers and the head fit the big worker, as does 1..3)
    // is the planner's choice. A boundary right before the attention layer
    // is held in prefix_cache_snapshots.rs.
    run_three_workers_on(&model_path, &r, ["81MiB", "79MiB", "79MiB"], false, 0.1, 8);
    let (_dir, model_path, r) = common::synth_reference("synth-qwen35moe-q8_0");
    run_three_workers_on(&model_path, &r, ["88MiB", "85MiB", "85MiB"], false, 0.1, 0);
    // With an MTP block, which the last worker receives and holds.
    let (_dir, model_path, r) = common::synth_reference("synth-qwen35-mtp-q8_0");
    run_three_workers_on(&model_path, &r, ["80MiB", "79MiB", "81MiB"], false, 0.1, 0);
}

/// Gemma 4 (sliding and global layers of different KV shapes, V from K,
/// the softcap) and its MoE variant (experts beside the dense MLP) over
/// three workers.
#[test]
fn three_workers_serve_gemma4_synth_token_for_token() {
    for (name, budgets) in [
        // Budgets that allow only uneven splits (two workers too small for
        // two layers of the dense model; one too small for two of the MoE).
        ("synth-gemma4-q8_0", ["80MiB", "76MiB", "76MiB"]),
        ("synth-gemma4-moe-q8_0", ["94MiB", "89MiB", "85MiB"]),
    ] {
        let (_dir, model_path, r) = common::synth_reference(name);
        run_three_workers_on(&model_path, &r, budgets, false, 0.1, 0);
    }
}

/// The Gemma 4 E-series over three workers: every stage makes its own
/// layers' per-layer inputs from the token ids, and layers 4-7, which read
/// the KV of layers 2 and 3, stay in the stage that holds those. Only the
/// cuts before layers 1 and 2 are allowed, so with three workers each
/// takes its share: 0..1, 1..2, 2..8.
#[test]
fn three_workers_serve_gemma4_e_series_synth_token_for_token() {
    let (_dir, model_path, r) = common::synth_reference("synth-gemma4-e-q8_0");
    let stages = run_three_workers_on(&model_path, &r, ["79MiB", "79MiB", "86MiB"], false, 0.1, 0);
    assert!(
        stages.iter().any(|s| s.ends_with(" 2..8")),
        "layers 2..8 are not one stage: {stages:?}"
    );
}

/// gpt-oss (sinks, biases, YaRN, alternating sliding window, MXFP4
/// experts) and Ministral-3 (YaRN, attention temperature) over three
/// workers. Their random weights give near-ties from the first tokens, so
/// llama.cpp's log-probabilities are held to 0.05 in
/// tests/tests/synth_reference.rs; here the pool must give one process's text.
#[test]
fn three_workers_serve_gpt_oss_and_mistral3_synth_token_for_token() {
    for (name, budgets) in [
        ("synth-gpt-oss-mxfp4", ["76MiB", "77MiB", "76MiB"]),
        ("synth-mistral3-q8_0", ["76MiB", "77MiB", "76MiB"]),
    ] {
        let (_dir, model_path, r) = common::synth_reference(name);
        run_three_workers_on(&model_path, &r, budgets, false, 0.1, 0);
    }
}
