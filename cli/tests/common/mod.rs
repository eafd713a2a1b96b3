//! Shared by the process tests: the test models, llama.cpp's references,
//! `strata worker` / `strata serve` processes on loopback ports, and a
//! plain HTTP client for the API.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod conversation;
pub mod streams;

pub const TOKEN: &str = "e2e-cluster-secret";

#[allow(unused_imports)]
pub use strata_tests::{model_path as model, GEMMA3, SMOLLM2};

/// `tests/data/<name>.json`.
pub fn reference(name: &str) -> Value {
    strata_tests::reference(&format!("{name}.json"))
}

/// Writes `strata synth ARGS -o PATH` (random weights; `args` without
/// `synth` and `-o`).
pub fn synth<S: AsRef<std::ffi::OsStr>>(args: &[S], path: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("synth")
        .args(args)
        .arg("-o")
        .arg(path)
        .env("STRATA_LOG", "warn")
        .output()
        .expect("run strata synth");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `strata synth` model and llama.cpp's outputs on it
/// (`tests/data/<name>.json`, recorded by `scripts/record-reference.py`):
/// the model is written again with the recorded arguments and must be the
/// very file llama.cpp read.
pub fn synth_reference(name: &str) -> (tempfile::TempDir, PathBuf, Value) {
    use sha2::Digest;
    let r = reference(name);
    let s = &r["synth"];
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(format!("{name}.gguf"));
    let text = |k: &str| {
        s[k].as_str()
            .unwrap_or_else(|| panic!("{name}: synth.{k}"))
            .to_string()
    };
    let mut args = vec![
        "synth".to_string(),
        "--arch".into(),
        text("arch"),
        "--preset".into(),
        text("preset"),
        "--quant".into(),
        text("quant"),
        "--seed".into(),
        s["seed"].as_u64().expect("synth.seed").to_string(),
    ];
    if let Some(layers) = s["layers"].as_u64() {
        args.extend(["--layers".into(), layers.to_string()]);
    }
    synth(&args[1..], &path);
    let digest = sha2::Sha256::digest(std::fs::read(&path).expect("synth output"));
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        r["gguf_sha256"].as_str().expect("gguf_sha256"),
        "{name}: `strata synth {}` no longer writes the file llama.cpp was recorded on",
        args[1..].join(" ")
    );
    (dir, path, r)
}

/// A child process whose stderr lines are collected; killed on drop.
pub struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    pub log: Vec<String>,
    name: String,
}

impl Proc {
    pub fn spawn(name: &str, args: &[&str]) -> Proc {
        Self::spawn_with_env(name, args, &[])
    }

    pub fn spawn_with_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(args)
            .envs(env.iter().copied())
            .env("STRATA_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn strata");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines,
            log: Vec::new(),
            name: name.to_string(),
        }
    }

    /// What follows `needle` in a line already read, else in the next one
    /// that has it ([`Proc::wait_for`]).
    pub fn logged(&mut self, needle: &str, timeout: Duration) -> String {
        let past = self.log.iter().find_map(|line| {
            line.find(needle)
                .map(|i| line[i + needle.len()..].to_string())
        });
        past.unwrap_or_else(|| self.wait_for(needle, timeout))
    }

    /// Waits for a stderr line containing `needle`; returns what follows it.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line
                        .find(needle)
                        .map(|i| line[i + needle.len()..].to_string());
                    self.log.push(line);
                    if let Some(rest) = found {
                        return rest;
                    }
                }
                Err(_) => panic!(
                    "{}: no line with {needle:?} within {timeout:?}; log:\n{}",
                    self.name,
                    self.log.join("\n")
                ),
            }
        }
    }
}

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal by name (`STOP`, `CONT`, ...).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{name} {}", self.child.id());
    }
}

impl Proc {
    /// Whether the process has not exited (crashed, aborted) yet.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `strata worker` on a free loopback port.
pub struct Worker {
    pub proc: Proc,
    /// host:port
    pub addr: String,
    /// host:port#sha256:<hex>, as it logs itself: what `--worker` takes.
    pub spec: String,
    _dirs: Vec<tempfile::TempDir>,
}

/// The state dir every test worker shares, as the workers of one machine
/// share the default one: a worker restarted on its old address keeps its
/// certificate, and its pin is known before it starts.
pub fn worker_state_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("worker-state")
}

/// The certificate fingerprint of workers using [`worker_state_dir`].
pub fn worker_fingerprint() -> strata_proto::Fingerprint {
    strata_proto::NodeIdentity::load_or_create(&worker_state_dir())
        .expect("worker identity")
        .fingerprint()
}

pub fn token_file(dir: &Path) -> PathBuf {
    let p = dir.join("token");
    std::fs::write(&p, format!("{TOKEN}\n")).expect("token file");
    p
}

impl Worker {
    pub fn start(mem_budget: &str, model_dir: Option<&Path>) -> Worker {
        Self::start_with_env(mem_budget, model_dir, &[])
    }

    /// A worker with extra environment (the CUDA emulator, say).
    pub fn start_with_env(
        mem_budget: &str,
        model_dir: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Worker {
        Self::start_at("127.0.0.1:0", mem_budget, model_dir, env)
    }

    /// A worker on `listen` (a dead worker's address, to bring it back).
    pub fn start_at(
        listen: &str,
        mem_budget: &str,
        model_dir: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Worker {
        let state = worker_state_dir();
        Self::start_in(listen, mem_budget, model_dir, env, &state, &[])
    }

    /// A worker on `listen` that keeps its prefix blocks in `kv_dir`
    /// (`--kv-cache-dir`), with the shared TLS identity so that it comes
    /// back on its old address with its old pin.
    pub fn with_kv_cache(
        listen: &str,
        mem_budget: &str,
        model_dir: Option<&Path>,
        kv_dir: &Path,
    ) -> Worker {
        let kv = ["--kv-cache-dir", kv_dir.to_str().expect("a UTF-8 path")];
        Self::start_in(listen, mem_budget, model_dir, &[], &worker_state_dir(), &kv)
    }

    /// A worker whose TLS identity lives in `state_dir`; `extra` flags go last.
    pub fn start_in(
        listen: &str,
        mem_budget: &str,
        model_dir: Option<&Path>,
        env: &[(&str, &str)],
        state_dir: &Path,
        extra: &[&str],
    ) -> Worker {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = token_file(dir.path());
        let cache = dir.path().join("slices");
        let state = state_dir.display().to_string();
        let mut args = vec![
            "worker",
            "--state-dir",
            &state,
            "--listen",
            listen,
            "--token-file",
            token.to_str().unwrap(),
            "--mem-budget",
            mem_budget,
            "--cache-dir",
            cache.to_str().unwrap(),
            "-t",
            "1",
        ];
        let md;
        if let Some(d) = model_dir {
            md = d.display().to_string();
            args.extend(["--model-dir", &md]);
        }
        args.extend_from_slice(extra);
        let mut proc = Proc::spawn_with_env("worker", &args, env);
        let rest = proc.wait_for("worker listening on ", Duration::from_secs(120));
        let spec = rest.split_whitespace().next().expect("address").to_string();
        let (addr, _) = strata_proto::parse_peer(&spec).expect("host:port[#sha256:<hex>]");
        Worker {
            proc,
            addr,
            spec,
            _dirs: vec![dir],
        }
    }

    /// The worker's Health, over gRPC with the cluster token.
    pub fn health(&self) -> strata_proto::v1::HealthReply {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (addr, pin) = strata_proto::parse_peer(&self.spec).expect("spec");
            let mut c = strata_proto::connect(&addr, TOKEN, pin)
                .await
                .expect("connect");
            c.health(strata_proto::v1::HealthRequest {})
                .await
                .expect("health")
                .into_inner()
        })
    }
}

/// A `strata serve` on a free loopback port, ready to answer.
pub struct Server {
    pub proc: Proc,
    pub base: String,
    _dir: tempfile::TempDir,
}

/// Three workers, each with its own KV cache directory (`kv_dirs`), on
/// `listen` (fresh ports when `None`; the first worker reads `model_dir`),
/// and `strata serve -c 2048 -n 1` over them: a pool to stop and start
/// again on the same addresses.
pub fn kv_cache_pool(
    model: &Path,
    model_dir: &Path,
    budget: &str,
    kv_dirs: &[&Path],
    listen: Option<&[String]>,
) -> (Vec<Worker>, Server) {
    let workers: Vec<Worker> = (0..kv_dirs.len())
        .map(|i| {
            let addr = listen.map_or("127.0.0.1:0", |l| l[i].as_str());
            let dir = (i == 0).then_some(model_dir);
            Worker::with_kv_cache(addr, budget, dir, kv_dirs[i])
        })
        .collect();
    let mut args = vec!["-c", "2048", "-n", "1"];
    for w in &workers {
        args.extend(["--worker", w.spec.as_str()]);
    }
    let server = Server::start(model, &args);
    (workers, server)
}

impl Server {
    /// `extra` goes after `serve -m MODEL --listen 127.0.0.1:0 --token-file F`.
    pub fn start(model: &Path, extra: &[&str]) -> Server {
        Self::start_with_env(model, extra, &[])
    }

    /// [`Self::start`] with extra environment (the CUDA emulator, say).
    pub fn start_with_env(model: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = token_file(dir.path());
        let mut args = vec![
            "serve",
            "-m",
            model.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            token.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let mut proc = Proc::spawn_with_env("serve", &args, env);
        let rest = proc.wait_for("serving on http://", Duration::from_secs(300));
        let addr = rest.trim().trim_end_matches("/v1").to_string();
        Server {
            proc,
            base: format!("http://{addr}"),
            _dir: dir,
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into()
}

/// POSTs JSON; returns the status and the parsed body.
pub fn post(url: &str, body: &Value) -> (u16, Value) {
    post_with(url, body, None)
}

pub fn post_with(url: &str, body: &Value, api_key: Option<&str>) -> (u16, Value) {
    let mut req = agent().post(url).header("content-type", "application/json");
    if let Some(k) = api_key {
        req = req.header("authorization", &format!("Bearer {k}"));
    }
    let mut resp = req.send(body.to_string()).expect("request");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: {e}: {text}")),
    )
}

pub fn get(url: &str) -> (u16, String) {
    let mut resp = agent().get(url).call().expect("request");
    (
        resp.status().as_u16(),
        resp.body_mut().read_to_string().expect("body"),
    )
}

/// An SSE response read line by line.
pub struct EventStream {
    reader: BufReader<Box<dyn Read + Send + Sync>>,
}

impl EventStream {
    pub fn open(url: &str, body: &Value) -> EventStream {
        let resp = agent()
            .post(url)
            .header("content-type", "application/json")
            .send(body.to_string())
            .expect("request");
        assert_eq!(resp.status().as_u16(), 200, "stream status");
        let reader: Box<dyn Read + Send + Sync> = Box::new(resp.into_body().into_reader());
        EventStream {
            reader: BufReader::new(reader),
        }
    }

    /// The next `data:` payload; `None` at the end of the stream.
    pub fn next_data(&mut self) -> Option<String> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if let Some(d) = line.trim_end().strip_prefix("data: ") {
                return Some(d.to_string());
            }
        }
    }
}

/// Polls `check` until it holds or `timeout` passes.
/// Reads a stream to its end; the last error event in it, if any.
pub fn stream_error(stream: &mut EventStream) -> Option<String> {
    let mut error = None;
    while let Some(d) = stream.next_data() {
        if d.contains("\"error\"") {
            error = Some(d);
        }
    }
    error
}

/// Whether the server's `/health` turns 503 and names `worker` within 10 s.
pub fn health_names(server: &Server, worker: &str) -> bool {
    eventually(Duration::from_secs(10), || {
        let (status, body) = get(&format!("{}/health", server.base));
        status == 503 && body.contains(worker)
    })
}

pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    check()
}

/// `strata generate` greedy in one process: the text a pool must reproduce.
pub fn single_process(model: &Path, prompt: &str, n: usize, ignore_eos: bool) -> String {
    single_process_kv(model, prompt, n, ignore_eos, "f16")
}

/// [`single_process`] with K and V cached as `kv_type`.
pub fn single_process_kv(
    model: &Path,
    prompt: &str,
    n: usize,
    ignore_eos: bool,
    kv_type: &str,
) -> String {
    let n = n.to_string();
    let mut args = vec![
        "generate",
        "-m",
        model.to_str().unwrap(),
        "-p",
        prompt,
        "-n",
        &n,
        "--temp",
        "0",
        "--cache-type-k",
        kv_type,
        "--cache-type-v",
        kv_type,
    ];
    if ignore_eos {
        args.push("--ignore-eos");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(&args)
        .env("STRATA_LOG", "warn")
        .output()
        .expect("run strata generate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Runs a Python check script; its last line must say it passed.
pub fn run_python(script: &str, args: &[&str], passed: &str) {
    let python = std::env::var("STRATA_PYTHON").unwrap_or_else(|_| "python3".into());
    let path = format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(&python)
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success() && stdout.contains(passed),
        "{script} failed:\n{stdout}\n{stderr}\n(scripts/test.sh installs openai and jsonschema)"
    );
}
