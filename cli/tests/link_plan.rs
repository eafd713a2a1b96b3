//! Links in the plan: `serve` measures the link to each worker (`Echo`
//! round trips), each worker its links to the others (`MeasureLinks`), and
//! the planner charges each hop by them. Three workers on
//! three loopback "hosts", the second and third behind our delay relay:
//! whichever of the two has 100 ms on its link gets no stage, and the tokens
//! stay one process's. (The relay delays what reaches the slow worker from
//! anyone, so the coordinator's links alone would give the same plan: that
//! the planner charges a measured pair is shown in
//! `coordinator/tests/planner_placement.rs`; here, that the workers
//! measure it.)

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A `delay-relay` from `listen` to `target`, killed on drop.
struct Relay(Child);

impl Relay {
    fn start(listen: &str, target: &str, delay_us: u64) -> Relay {
        let child = Command::new(env!("CARGO_BIN_EXE_delay-relay"))
            .args(["relay", listen, target, &delay_us.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn delay-relay");
        assert!(
            eventually(Duration::from_secs(10), || std::net::TcpStream::connect(
                listen
            )
            .is_ok()),
            "relay on {listen} did not come up"
        );
        Relay(child)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port(host: &str) -> u16 {
    std::net::TcpListener::bind((host, 0))
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port()
}

#[test]
fn a_slow_link_gets_no_hop() {
    // Either of two interchangeable workers: the slow link decides.
    for slow in [1, 2] {
        plan_around_a_slow_link(slow);
    }
}

/// A firewall that lets one worker out and nothing in from it: the second
/// worker cannot connect to the first, though the first (asked first)
/// measures its way to the second and the coordinator reaches both. The
/// coordinator asks each way of the pair, finds the blocked one, and plans
/// the worker that reaches no one as the last stage.
#[test]
fn a_way_blocked_one_way_only_is_found_and_not_planned() {
    let model = model(SMOLLM2);
    // Under the target folder: a /tmp mounted noexec would make the loader
    // skip the shim.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let shim = dir.path().join("refuse-connect.so");
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/refuse-connect.c");
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&shim)
        .args([source, "-ldl"])
        .status()
        .expect("run cc");
    assert!(built.success(), "compiling {source}");
    // Neither can hold the model alone (see plan_around_a_slow_link).
    // The walled-in worker on the host the planner tries first (ties go
    // by name), so only what was measured keeps it out of stage 0.
    let open = Worker::start_at("127.0.0.3:0", "170MiB", None, &[]);
    let port = open.addr.rsplit_once(':').expect("host:port").1.to_string();
    let shim = shim.to_str().expect("a UTF-8 path");
    let env = [("LD_PRELOAD", shim), ("REFUSE_CONNECT_PORT", port.as_str())];
    let walled = Worker::start_at("127.0.0.2:0", "170MiB", None, &env);
    // The open worker first: it measures the pair first, the way that works.
    let mut server = serve_loaded(&model, &[&open.spec, &walled.spec]);
    let needle = format!("worker {} cannot connect to {}", walled.addr, open.addr);
    server.proc.logged(&needle, Duration::from_secs(5));
    let stages = pool_stages(&server);
    let addrs: Vec<&str> = stages.iter().filter_map(|s| s["addr"].as_str()).collect();
    assert_eq!(
        addrs,
        [open.addr.as_str(), walled.addr.as_str()],
        "the worker that reaches no one is the last stage"
    );
    assert_answers_as_one_process(&server, &model);
}

/// `serve` on the workers `specs`, once it has loaded its plan.
fn serve_loaded(model: &std::path::Path, specs: &[&str]) -> Server {
    let mut args = vec!["-c", "512", "-n", "2"];
    for &s in specs {
        args.extend(["--worker", s]);
    }
    let server = Server::start(model, &args);
    assert!(
        eventually(Duration::from_secs(120), || get(&format!(
            "{}/health",
            server.base
        ))
        .0 == 200),
        "never loaded: {}",
        get(&format!("{}/health", server.base)).1
    );
    server
}

/// The stages `/v1/pool` shows for the served model.
fn pool_stages(server: &Server) -> Vec<Value> {
    let (status, pool) = get(&format!("{}/v1/pool", server.base));
    assert_eq!(status, 200, "{pool}");
    let pool: Value = serde_json::from_str(&pool).expect("pool json");
    pool["models"][0]["stages"]
        .as_array()
        .expect("stages")
        .clone()
}

/// A greedy completion through the pool gives one process's text.
fn assert_answers_as_one_process(server: &Server, model: &std::path::Path) {
    let prompt = "The capital of France is";
    let (status, body) = post(
        &format!("{}/v1/completions", server.base),
        &json!({"prompt": prompt, "max_tokens": 12, "temperature": 0, "ignore_eos": true}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["text"].as_str().expect("text"),
        single_process(model, prompt, 12, true),
        "through the pool, the tokens of one process"
    );
}

/// Three workers, the second and third behind relays; the relay of worker
/// `slow` holds each byte 100 ms: far more than a busy box's error in the
/// workers' speed probes can make up (at 20 ms, a probe that read one worker
/// 20x slow once put a stage behind the slow link).
fn plan_around_a_slow_link(slow: usize) {
    let model = model(SMOLLM2);
    // The first worker holds most of the model, either other one the rest;
    // the other two together cannot (64 MiB of each CPU budget is margin).
    let workers = [
        Worker::start("170MiB", None),
        Worker::start("150MiB", None),
        Worker::start("150MiB", None),
    ];
    let fingerprint = worker_fingerprint();
    let mut specs = vec![workers[0].spec.clone()];
    let mut relayed = Vec::new();
    let mut relays = Vec::new();
    for (i, w) in workers.iter().enumerate().skip(1) {
        let host = format!("127.0.0.{}", i + 1);
        let addr = format!("{host}:{}", free_port(&host));
        let delay_us = if i == slow { 100_000 } else { 0 };
        relays.push(Relay::start(&addr, &w.addr, delay_us));
        specs.push(format!("{addr}#{fingerprint}"));
        relayed.push(addr);
    }
    let (slow_addr, quick_addr) = (&relayed[slow - 1], &relayed[2 - slow]);
    let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
    let mut server = serve_loaded(&model, &specs);
    // The coordinator's link to the slow worker, and the first worker's
    // (measured by that worker: `MeasureLinks`).
    let first = &workers[0].addr;
    for needle in [
        format!("worker {slow_addr}: link "),
        format!("worker {first}: link to {slow_addr} "),
    ] {
        let measured = server.proc.logged(&needle, Duration::from_secs(5));
        let one_way_us: f64 = measured
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{needle:?} line: {measured:?}"));
        assert!(
            (100_000.0..115_000.0).contains(&one_way_us),
            "{needle}: a 100 ms relay measured as {one_way_us} us one way"
        );
    }

    let stages = pool_stages(&server);
    let addrs: Vec<&str> = stages.iter().filter_map(|s| s["addr"].as_str()).collect();
    assert_eq!(addrs.len(), 2, "two stages: {stages:?}");
    assert!(
        addrs.contains(&quick_addr.as_str()) && !addrs.contains(&slow_addr.as_str()),
        "the slow link {slow_addr} should carry no hop: {addrs:?}"
    );
    for s in &stages {
        let latency = s["link_latency_us"].as_f64().expect("measured link");
        assert!(latency < 5_000.0, "{s}");
        assert!(s["link_mbit_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{s}");
    }
    // The hop between the two stages, as the first one's worker measured it.
    let hop = &stages[0];
    assert!(
        hop["next_link_latency_us"].as_f64().expect("measured hop") < 5_000.0,
        "{hop}"
    );
    assert!(
        hop["next_link_mbit_per_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{hop}"
    );
    assert!(
        stages[1].get("next_link_latency_us").is_none(),
        "the last stage has no hop"
    );
    assert_answers_as_one_process(&server, &model);
}

/// The relay delays UDP (QUIC's data plane) on its TCP address too: each
/// datagram comes back intact to the client that sent it, no sooner than
/// the delay both ways.
#[test]
fn the_relay_delays_datagrams_both_ways() {
    use std::net::UdpSocket;
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = echo.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    let listen = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let _relay = Relay::start(&listen, &target, 20_000);
    let clients: Vec<UdpSocket> = (0..2)
        .map(|_| {
            let c = UdpSocket::bind("127.0.0.1:0").unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c
        })
        .collect();
    for round in 0..5u8 {
        for (i, c) in clients.iter().enumerate() {
            let sent = vec![round * 2 + i as u8; 1200];
            let started = std::time::Instant::now();
            c.send_to(&sent, &listen).unwrap();
            let mut buf = [0u8; 2048];
            let n = c.recv(&mut buf).expect("the datagram came back");
            let took = started.elapsed();
            assert_eq!(&buf[..n], &sent[..], "client {i}, round {round}");
            assert!(
                took >= Duration::from_millis(40),
                "{took:?}: not delayed both ways"
            );
        }
    }
}
