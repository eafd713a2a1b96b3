//! Shared by the rpc_* tests: in-process workers on loopback ports and a
//! minimal coordinator that drives the data stream.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use strata_kernels::CpuBackend;
use strata_proto::{v1, WorkerClient};
use strata_worker::service::{WorkerConfig, WorkerService};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

pub const TOKEN: &str = "cluster-secret-for-tests";

pub fn model_path() -> PathBuf {
    let dir = std::env::var("STRATA_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/strata/models")
        });
    dir.join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// A model dir holding only SmolLM2 (a link to it).
pub fn smollm_model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(model_path(), dir.path().join("smollm2.gguf")).expect("symlink");
    dir
}

pub struct TestWorker {
    /// host:port#sha256:<hex> (host:port for a plaintext worker).
    pub addr: String,
    pub service: WorkerService,
    pub _dirs: Vec<tempfile::TempDir>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
    }
}

/// Starts a CPU worker on 127.0.0.1:0 with its own cache dir and TLS
/// certificate.
pub async fn start_worker(model_dir: Option<PathBuf>, mem_budget_bytes: Option<u64>) -> TestWorker {
    let identity = strata_proto::NodeIdentity::generate().expect("identity");
    start_worker_with(model_dir, mem_budget_bytes, Some(Arc::new(identity))).await
}

/// A worker serving TLS with `identity`, or plaintext (`--insecure`) without.
pub async fn start_worker_with(
    model_dir: Option<PathBuf>,
    mem_budget_bytes: Option<u64>,
    identity: Option<Arc<strata_proto::NodeIdentity>>,
) -> TestWorker {
    let pin = identity.as_ref().map(|id| id.fingerprint());
    let cache = tempfile::tempdir().expect("tempdir");
    let config = WorkerConfig {
        token: TOKEN.into(),
        mem_budget_bytes,
        model_dir,
        model_files: Vec::new(),
        cache_dir: cache.path().to_path_buf(),
        cache_max_bytes: u64::MAX,
        threads: 2,
        own_thread_pool: None,
        identity,
        kv_disk: None,
    };
    let service =
        tokio::task::spawn_blocking(move || WorkerService::start(config, CpuBackend::new))
            .await
            .expect("join")
            .expect("worker starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut addr = listener.local_addr().expect("addr").to_string();
    if let Some(pin) = pin {
        addr = format!("{addr}#{pin}");
    }
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let svc = service.clone();
    tokio::spawn(async move {
        let _ = svc
            .serve(listener, async {
                let _ = rx.await;
            })
            .await;
    });
    TestWorker {
        addr,
        service,
        _dirs: vec![cache],
        shutdown: Some(tx),
    }
}

pub async fn client(addr: &str) -> WorkerClient {
    connect(addr, TOKEN).await.expect("connect")
}

/// Connects to `host:port#sha256:<hex>` (TLS) or `host:port` (plaintext).
pub async fn connect(
    spec: &str,
    token: &str,
) -> Result<WorkerClient, strata_proto::link::ConnectError> {
    let (addr, pin) = strata_proto::parse_peer(spec).expect("worker spec");
    strata_proto::connect(&addr, token, pin).await
}

/// Loads a slice, collecting progress; returns the phases seen.
pub async fn load(
    c: &mut WorkerClient,
    digest: &str,
    first: u32,
    end: u32,
    next: &str,
    act_dtype: v1::ActDtype,
) -> Result<Vec<v1::LoadProgress>, tonic::Status> {
    load_request(
        c,
        v1::LoadSliceRequest {
            model_digest: digest.into(),
            layers: Some(v1::LayerRange { first, end }),
            ctx_tokens: 512,
            kv_type: v1::KvType::F16 as i32,
            next_stage_addr: next.into(),
            model_path: String::new(),
            act_dtype: act_dtype as i32,
            max_batch_tokens: 0,
            max_seq_tokens: 0,
            // The coordinator's check, whenever the test model is meant.
            slice_hash: if digest == self::digest() {
                slice_hash(first, end)
            } else {
                String::new()
            },
            next_transport: v1::DataTransport::Grpc as i32,
            next_process_id: 0,
        },
    )
    .await
}

pub async fn load_request(
    c: &mut WorkerClient,
    req: v1::LoadSliceRequest,
) -> Result<Vec<v1::LoadProgress>, tonic::Status> {
    let mut stream = c.load_slice(req).await?.into_inner();
    let mut seen = Vec::new();
    while let Some(p) = stream.message().await? {
        seen.push(p);
    }
    Ok(seen)
}

/// A coordinator's view of one sequence on the data stream.
pub struct DataStream {
    frames: mpsc::Sender<v1::BatchFrame>,
    replies: tonic::Streaming<v1::StageReply>,
    next_batch: u64,
    /// The reply route frames name, and the data stream's own replies
    /// while a reply line takes its place (kept open: dropping it would
    /// close the stream).
    route: u64,
    forward_replies: Option<tonic::Streaming<v1::StageReply>>,
}

impl DataStream {
    pub async fn open(c: &mut WorkerClient) -> DataStream {
        let (tx, rx) = mpsc::channel(8);
        let replies = c
            .forward(ReceiverStream::new(rx))
            .await
            .expect("forward")
            .into_inner();
        DataStream {
            frames: tx,
            replies,
            next_batch: 0,
            route: 0,
            forward_replies: None,
        }
    }

    /// From now on replies are read from `stage`'s reply line of `route`,
    /// which the frames name.
    pub async fn reply_on_line(&mut self, stage: &mut WorkerClient, route: u64) {
        let line = stage
            .replies(v1::RepliesRequest { route })
            .await
            .expect("replies")
            .into_inner();
        self.forward_replies = Some(std::mem::replace(&mut self.replies, line));
        self.route = route;
    }

    /// The data stream's own replies while a line is read (see
    /// [`reply_on_line`](Self::reply_on_line)).
    pub fn forward_replies(&mut self) -> &mut tonic::Streaming<v1::StageReply> {
        self.forward_replies.as_mut().expect("a reply line is open")
    }

    /// Sends a frame without waiting for its reply; returns its batch id.
    pub async fn send(&mut self, entries: Vec<v1::BatchEntry>, token_ids: Vec<u32>) -> u64 {
        let batch_id = self.next_batch;
        self.next_batch += 1;
        let frame = v1::BatchFrame {
            header: Some(v1::BatchHeader {
                batch_id,
                entries,
                reply_route: self.route,
            }),
            token_ids,
            ..Default::default()
        };
        self.frames.send(frame).await.expect("send frame");
        batch_id
    }

    pub async fn reply(&mut self) -> v1::StageReply {
        self.replies
            .message()
            .await
            .expect("reply")
            .expect("stream open")
    }

    pub async fn step(
        &mut self,
        entries: Vec<v1::BatchEntry>,
        token_ids: Vec<u32>,
    ) -> v1::StageReply {
        let batch_id = self.next_batch;
        self.next_batch += 1;
        let frame = v1::BatchFrame {
            header: Some(v1::BatchHeader {
                batch_id,
                entries,
                reply_route: self.route,
            }),
            token_ids,
            ..Default::default()
        };
        self.frames.send(frame).await.expect("send frame");
        let reply = self
            .replies
            .message()
            .await
            .expect("reply")
            .expect("stream open");
        assert_eq!(reply.batch_id, batch_id);
        reply
    }

    /// Greedy generation of `n` tokens for `seq` after `prompt`, one frame per step.
    pub async fn generate_greedy(&mut self, seq: u64, prompt: &[u32], n: usize) -> Vec<u32> {
        let greedy = strata_worker::service::frames::sampling_to_wire(
            &strata_worker::SamplingParams::greedy(),
        );
        let mut history = prompt.to_vec();
        let mut out = Vec::new();
        let mut entry = v1::BatchEntry {
            seq_id: seq,
            start_pos: 0,
            n_tokens: prompt.len() as u32,
            sample: true,
            sampling: Some(greedy),
            ..Default::default()
        };
        let mut input = prompt.to_vec();
        while out.len() < n {
            let reply = self.step(vec![entry], input).await;
            assert!(reply.error.is_empty(), "stage error: {}", reply.error);
            assert_eq!(reply.tokens.len(), 1);
            let t = reply.tokens[0].token_id;
            out.push(t);
            history.push(t);
            entry = v1::BatchEntry {
                seq_id: seq,
                start_pos: history.len() as u32 - 1,
                n_tokens: 1,
                sample: true,
                sampling: None,
                decode: true,
                ..Default::default()
            };
            input = vec![t];
        }
        out
    }
}

/// Greedy tokens from a single-process run of the whole model.
pub fn single_process_greedy(prompt: &[u32], n: usize) -> Vec<u32> {
    let file = strata_model::GgufFile::open(model_path()).expect("model");
    let hp = strata_model::arch::ModelSpec::from_gguf(&file).expect("hp");
    let mut stage = strata_worker::Stage::load(
        CpuBackend::new(),
        &file,
        strata_worker::LayerRange {
            first: 0,
            end: hp.n_layers,
        },
        512,
    )
    .expect("load");
    let mut sampler = strata_worker::Sampler::new(strata_worker::SamplingParams::greedy());
    strata_worker::generate::generate(&mut stage, prompt, n, &mut sampler, |_| true)
        .expect("generate")
        .iter()
        .map(|s| s.token)
        .collect()
}

pub struct Reference {
    pub prompt_ids: Vec<u32>,
    pub tokens: Vec<u32>,
    /// Per step, log-prob of the best token less that of the second best.
    pub top2_gaps: Vec<f64>,
}

pub fn reference() -> Reference {
    reference_from("smollm2-135m.json")
}

/// The first greedy case of `tests/data/<file>` (a SmolLM2 reference).
pub fn reference_from(file: &str) -> Reference {
    let path = format!("{}/../tests/data/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("reference json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let g = &v["greedy"][0];
    let ids = |k: &str| {
        g[k].as_array()
            .expect(k)
            .iter()
            .map(|x| x.as_u64().expect("id") as u32)
            .collect()
    };
    let top2_gaps = g["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|st| {
            let top = st["top"].as_array().expect("top");
            top[0][1].as_f64().expect("lp") - top[1][1].as_f64().expect("lp")
        })
        .collect();
    Reference {
        prompt_ids: ids("prompt_ids"),
        tokens: ids("tokens"),
        top2_gaps,
    }
}

pub fn digest() -> String {
    let file = strata_model::GgufFile::open(model_path()).expect("model");
    strata_worker::slice_cache::model_digest(&file).expect("digest")
}

/// The slice hash of layers `first..end` of the test model, as the
/// coordinator computes it.
pub fn slice_hash(first: u32, end: u32) -> String {
    let file = open_model();
    let n_layers = strata_model::arch::ModelSpec::from_gguf(&file)
        .expect("hp")
        .n_layers;
    let range = strata_model::LayerRange {
        first: first as usize,
        end: end as usize,
    };
    strata_model::slice_hash::slice_hash(&file, range, n_layers)
}

pub fn open_model() -> Arc<strata_model::GgufFile> {
    Arc::new(strata_model::GgufFile::open(model_path()).expect("model"))
}
