//! Failover with real processes on loopback: `strata serve` over four
//! `strata worker`s (three stages and a spare), eight concurrent greedy
//! streams, and a worker killed (SIGKILL) in the first, a middle and the
//! last stage in turn, then one hung (SIGSTOP). Every stream must finish
//! with the text one process gives. Then a pool that no longer fits: 503s
//! that name the lost worker, until it comes back and is used again.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::streams::Streams;
use common::{get, model, post, EventStream, Server, Worker, SMOLLM2};
use serde_json::{json, Value};

const PROMPTS: [&str; 8] = [
    "Once upon a time",
    "The capital of France is",
    "def fibonacci(n):",
    "My favourite colour is",
    "In 1492,",
    "The quick brown fox",
    "Water boils at",
    "Hello, my name is",
];
const MAX_TOKENS: usize = 40;
/// Three of these hold SmolLM2 at `SERVE_ARGS`; two do not.
const BUDGET: &str = "125MiB";
/// Three of these hold the qwen35 synth model at `-c 512 -n 2`; two do not.
const QWEN35_BUDGET: &str = "80MiB";
const SERVE_ARGS: [&str; 6] = ["-c", "128", "-n", "8", "-b", "64"];

fn health(server: &Server) -> (u16, Value) {
    let (status, body) = get(&format!("{}/health", server.base));
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// The worker address of each stage, in order.
fn stage_workers(server: &Server) -> Vec<String> {
    let (status, h) = health(server);
    assert_eq!(status, 200, "{h}");
    h["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().split(' ').next().unwrap().to_string())
        .collect()
}

fn metric(server: &Server, name: &str) -> u64 {
    let (_, body) = get(&format!("{}/metrics", server.base));
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("strata_{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in {body}"))
}

/// `n` workers of [`BUDGET`], the first reading SmolLM2 (at `model_path`)
/// from the model directory returned.
fn smollm2_workers(model_path: &std::path::Path, n: usize) -> (tempfile::TempDir, Vec<Worker>) {
    let model_dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(model_path, model_dir.path().join(SMOLLM2)).unwrap();
    let workers = (0..n)
        .map(|i| Worker::start(BUDGET, (i == 0).then(|| model_dir.path())))
        .collect();
    (model_dir, workers)
}

#[test]
fn streams_survive_a_killed_or_hung_worker_with_one_process_text() {
    let model_path = model(SMOLLM2);
    let expected: Vec<String> = PROMPTS
        .iter()
        .map(|p| common::single_process(&model_path, p, MAX_TOKENS, true))
        .collect();
    let (model_dir, mut workers) = smollm2_workers(&model_path, 4);
    let mut args = SERVE_ARGS.to_vec();
    args.extend(["--stage-timeout", "20"]);
    for w in &workers {
        args.extend(["--worker", w.spec.as_str()]);
    }
    let server = Server::start(&model_path, &args);
    assert_eq!(stage_workers(&server).len(), 3, "three stages and a spare");

    // Undisturbed: eight streams batched together give one process's text.
    assert_eq!(
        Streams::start(&server, &PROMPTS, MAX_TOKENS).finish(),
        expected,
        "undisturbed"
    );

    let mut placements = vec![stage_workers(&server)];
    for (case, pick) in [("first", 0usize), ("middle", 1), ("last", 2), ("hung", 1)] {
        let stages = stage_workers(&server);
        let victim_addr = stages[pick.min(stages.len() - 1)].clone();
        let victim = workers.iter().position(|w| w.addr == victim_addr).unwrap();
        let failovers = metric(&server, "failovers_total");
        let streams = Streams::start(&server, &PROMPTS, MAX_TOKENS);
        streams.wait_for_tokens(3);
        let lost_at = Instant::now();
        if case == "hung" {
            workers[victim].proc.signal("STOP");
        } else {
            workers[victim].proc.kill();
        }
        let texts = streams.finish();
        let took = lost_at.elapsed();
        for (i, (got, want)) in texts.iter().zip(&expected).enumerate() {
            assert_eq!(
                got, want,
                "{case} stage ({victim_addr}) lost: stream {i} ({:?})",
                PROMPTS[i]
            );
        }
        assert!(
            metric(&server, "failovers_total") > failovers,
            "{case}: no failover counted"
        );
        assert!(!stage_workers(&server).contains(&victim_addr));
        eprintln!("{case} stage lost: streams done {took:.1?} after the loss");
        placements.push(stage_workers(&server));

        // Bring the worker back at its address for the next round.
        if case == "hung" {
            workers[victim].proc.signal("CONT");
        } else {
            let md = (victim == 0).then(|| model_dir.path());
            workers[victim] = Worker::start_at(&victim_addr, BUDGET, md, &[]);
        }
        assert!(
            common::eventually(Duration::from_secs(60), || health(&server).1["status"]
                == "ok"),
            "{case}: the pool did not settle"
        );
    }
    placements.dedup();
    assert!(
        placements.len() >= 3,
        "several placements were exercised: {placements:?}"
    );
    assert!(metric(&server, "replayed_tokens_total") > 0);
    assert!(metric(&server, "failover_pause_max_ms") > 0);
    // Nothing leaks: no worker holds KV for the finished streams, whether it
    // served through the failovers, was reloaded, or came back (beyond the
    // full blocks the prefix cache keeps, within the pool).
    for w in &workers {
        assert!(
            common::eventually(Duration::from_secs(20), || {
                let h = w.health();
                h.live_sequences == 0 && h.kv_blocks_used == h.kv_blocks_cached
            }),
            "{}: KV left behind: {:?}",
            w.addr,
            w.health()
        );
    }
}

#[test]
fn a_pool_too_small_answers_503_naming_the_lost_worker_until_it_returns() {
    let model_path = model(SMOLLM2);
    let mut workers = [Worker::start("160MiB", None), Worker::start("160MiB", None)];
    let mut args = SERVE_ARGS.to_vec();
    for w in &workers {
        args.extend(["--worker", w.spec.as_str()]);
    }
    let server = Server::start(&model_path, &args);
    assert_eq!(stage_workers(&server).len(), 2, "two workers are needed");
    let url = format!("{}/v1/completions", server.base);
    let request = json!({"prompt": "The capital of France is", "max_tokens": 12, "temperature": 0});
    let expected = common::single_process(&model_path, "The capital of France is", 12, false);
    let (status, body) = post(&url, &request);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["text"], expected.as_str());

    let mut stream = EventStream::open(
        &url,
        &json!({"prompt": "Once upon a time", "max_tokens": 100, "temperature": 0, "stream": true, "ignore_eos": true}),
    );
    stream.next_data().expect("a first chunk");
    let lost = workers[1].addr.clone();
    workers[1].proc.kill();
    let error = common::stream_error(&mut stream).expect("an error event before the stream ended");
    assert!(
        error.contains(&lost) && error.contains("cannot hold the model"),
        "{error}"
    );

    // Every request: a quick 503 in OpenAI's shape that says what was lost.
    let asked = Instant::now();
    let (status, body) = post(&url, &request);
    assert_eq!(status, 503, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&lost) && message.contains("cannot hold the model"),
        "{message}"
    );
    assert!(asked.elapsed() < Duration::from_secs(10), "no hang");
    assert!(common::health_names(&server, &lost));

    // The worker comes back at its address: planned in, answering again.
    workers[1] = Worker::start_at(&lost, "160MiB", None, &[]);
    assert!(
        common::eventually(Duration::from_secs(60), || health(&server).0 == 200),
        "the pool did not come back: {}",
        health(&server).1
    );
    assert!(
        stage_workers(&server).contains(&lost),
        "the returned worker is used"
    );
    let (status, body) = post(&url, &request);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["text"], expected.as_str());
}

#[test]
fn a_pool_started_before_its_workers_waits_for_them() {
    let model_path = model(SMOLLM2);
    let late_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let early = Worker::start("160MiB", None);
    let dir = tempfile::tempdir().unwrap();
    let token = common::token_file(dir.path());
    let mut args = vec![
        "serve",
        "-m",
        model_path.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--token-file",
        token.to_str().unwrap(),
    ];
    args.extend(SERVE_ARGS);
    let late_spec = format!("{late_addr}#{}", common::worker_fingerprint());
    args.extend(["--worker", &early.spec, "--worker", &late_spec]);
    let mut serve = common::Proc::spawn("serve", &args);
    let rest = serve.wait_for("HTTP API on http://", Duration::from_secs(60));
    let base = format!("http://{}", rest.split("/v1").next().unwrap());
    // Loading, and saying what it waits for.
    assert!(
        common::eventually(Duration::from_secs(30), || {
            let (status, body) = get(&format!("{base}/health"));
            status == 503 && body.contains("waiting for worker(s)") && body.contains(&late_addr)
        }),
        "{:?}",
        get(&format!("{base}/health"))
    );
    let _late = Worker::start_at(&late_addr, "160MiB", None, &[]);
    serve.wait_for("serving on http://", Duration::from_secs(120));
    let (status, body) = post(
        &format!("{base}/v1/completions"),
        &json!({"prompt": "The capital of France is", "max_tokens": 12, "temperature": 0}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["text"],
        common::single_process(&model_path, "The capital of France is", 12, false).as_str()
    );
}

/// Qwen3.5 (`strata synth` qwen35): every stage's recurrent state is
/// rebuilt by the replay. Two streams, the worker of a middle stage killed
/// mid-generation: both finish with one process's text, and no worker is
/// left holding a state slot.
#[test]
fn qwen35_recurrent_state_is_rebuilt_after_a_lost_worker() {
    let (_dir, model_path, r) = common::synth_reference("synth-qwen35-q8_0");
    let prompts: Vec<String> = r["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["prompt"].as_str().unwrap().to_string())
        .collect();
    let n = 48;
    let expected: Vec<String> = prompts
        .iter()
        .map(|p| common::single_process(&model_path, p, n, true))
        .collect();
    let model_dir = tempfile::tempdir().unwrap();
    let file = model_path.file_name().unwrap();
    std::os::unix::fs::symlink(&model_path, model_dir.path().join(file)).unwrap();
    let workers: Vec<Worker> = (0..4)
        .map(|i| Worker::start(QWEN35_BUDGET, (i == 0).then(|| model_dir.path())))
        .collect();
    let mut args = vec!["-c", "512", "-n", "2"];
    args.extend(["--stage-timeout", "20"]);
    for w in &workers {
        args.extend(["--worker", w.spec.as_str()]);
    }
    let server = Server::start(&model_path, &args);
    let stages = stage_workers(&server);
    assert_eq!(stages.len(), 3, "three stages and a spare: {stages:?}");
    let victim = workers.iter().position(|w| w.addr == stages[1]).unwrap();

    let seen: Vec<Arc<AtomicUsize>> = prompts.iter().map(|_| Arc::default()).collect();
    let threads: Vec<_> = prompts
        .iter()
        .zip(&seen)
        .map(|(prompt, seen)| {
            let url = format!("{}/v1/completions", server.base);
            let body = json!({"prompt": prompt, "max_tokens": n, "temperature": 0,
                              "stream": true, "ignore_eos": true});
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut stream = EventStream::open(&url, &body);
                let mut text = String::new();
                while let Some(d) = stream.next_data() {
                    if d == "[DONE]" {
                        break;
                    }
                    let v: Value = serde_json::from_str(&d).unwrap();
                    assert!(v.get("error").is_none(), "error event {d}");
                    text.push_str(v["choices"][0]["text"].as_str().unwrap_or(""));
                    seen.fetch_add(1, Ordering::Relaxed);
                }
                text
            })
        })
        .collect();
    let failovers = metric(&server, "failovers_total");
    // This model decodes fast: poll tightly and freeze the victim at once, so
    // that the loss lands mid-generation, then check that it did.
    let started = Instant::now();
    while !seen.iter().all(|s| s.load(Ordering::Relaxed) >= 3) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "streams did not start"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut workers = workers;
    workers[victim].proc.signal("STOP");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        seen.iter().all(|s| s.load(Ordering::Relaxed) < n),
        "a stream finished before the worker was lost"
    );
    workers[victim].proc.kill();
    for (t, want) in threads.into_iter().zip(&expected) {
        assert_eq!(&t.join().unwrap(), want, "a stream after the lost worker");
    }
    assert!(
        metric(&server, "failovers_total") > failovers,
        "no failover counted"
    );
    for (i, w) in workers.iter().enumerate().filter(|(i, _)| *i != victim) {
        assert!(
            common::eventually(Duration::from_secs(20), || {
                let h = w.health();
                h.live_sequences == 0 && h.state_slots_used == 0
            }),
            "worker {i} ({}) keeps a sequence: {:?}",
            w.addr,
            w.health()
        );
    }
}

/// A coordinator that died leaves data streams open on its workers until
/// their connections end (TCP's when the process is gone, QUIC's by its
/// idle timeout), and an ending stream frees its sequences on every stage.
/// A new coordinator that took over the workers meanwhile must not lose its
/// own sequences to that release.
#[test]
fn a_dead_coordinators_late_stream_end_frees_none_of_the_next_ones_sequences() {
    const PROMPT: &str = "Once upon a time";
    const TOKENS: usize = 120;
    let model_path = model(SMOLLM2);
    let expected = common::single_process(&model_path, PROMPT, TOKENS, true);
    let (_model_dir, mut workers) = smollm2_workers(&model_path, 3);
    let mut args = SERVE_ARGS.to_vec();
    for w in &workers {
        args.extend(["--worker", w.spec.as_str()]);
    }
    let mut old = Server::start(&model_path, &args);
    let first_stage = stage_workers(&old)[0].clone();
    let body = json!({"prompt": PROMPT, "max_tokens": 4, "temperature": 0});
    let (status, reply) = post(&format!("{}/v1/completions", old.base), &body);
    assert_eq!(status, 200, "{reply}");

    // The old coordinator hangs, a new one takes the same workers, and the
    // old one's connections close only once a stream of the new one runs.
    old.proc.signal("STOP");
    let new = Server::start(&model_path, &args);
    let streams = Streams::start(&new, &[PROMPT], TOKENS);
    streams.wait_for_tokens(3);
    old.proc.kill();
    let stage = workers.iter_mut().find(|w| w.addr == first_stage).unwrap();
    let released = stage
        .proc
        .wait_for("data stream closed: releasing", Duration::from_secs(30));
    eprintln!("the old coordinator's stream ended: releasing{released}");
    assert!(
        streams.seen()[0] < TOKENS,
        "the release came after the new stream had ended: nothing was tested"
    );
    assert_eq!(streams.finish(), [expected], "the new coordinator's stream");
}
