//! Connecting to workers, turning their capabilities into planner input, and
//! loading the planned slices back to front (so each stage's next stage is
//! up when it opens its data stream).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use strata_model::profile::KvType;
use strata_model::slice::{slice_tensors, LayerRange};
use strata_model::slice_hash::SliceHashes;
use strata_model::GgufFile;
use strata_proto::transport::TransportKind;
use strata_proto::{v1, Fingerprint, Trust, WorkerClient};

use crate::planner::{Backend, Link, WorkerSpec};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("worker {addr}: {message}")]
    Worker { addr: String, message: String },
    #[error("{0}")]
    Model(String),
}

fn worker_err(addr: &str, message: impl std::fmt::Display) -> ClusterError {
    ClusterError::Worker {
        addr: addr.to_string(),
        message: message.to_string(),
    }
}

/// A connected worker and what it said it offers.
#[derive(Clone)]
pub struct WorkerHandle {
    pub addr: String,
    /// Its pinned certificate; `None` over plaintext links.
    pub pin: Option<Fingerprint>,
    pub client: WorkerClient,
    pub caps: v1::CapabilitiesReply,
    /// The measured link to it (`None`: not measured, the planner assumes
    /// [`Link::DEFAULT_NETWORK`]).
    pub link: Option<Link>,
    /// Its measured links to workers of other hosts, by their address
    /// (`link_probe::measure_peer_links`), its own way only; a pair
    /// measured neither way is charged by the two ends' own links.
    pub peer_links: BTreeMap<String, Link>,
    /// Workers it could not connect to when measuring its links: a hop from
    /// it to one of them is planned only where no placement avoids it.
    pub unreachable: BTreeSet<String>,
}

impl WorkerHandle {
    /// Whether its data plane goes over QUIC when `asked` for: it must
    /// serve QUIC (a TLS worker of this version).
    pub fn quic(&self, asked: TransportKind) -> bool {
        asked == TransportKind::Quic && self.caps.serves_quic && self.pin.is_some()
    }

    /// `addr#sha256:<hex>` (or `addr` over plaintext): how the stage before
    /// it is told where to send.
    pub fn spec(&self) -> String {
        match self.pin {
            Some(pin) => format!("{}#{pin}", self.addr),
            None => self.addr.clone(),
        }
    }
}

/// Connects to every worker and asks for its capabilities.
pub async fn connect_workers(
    addrs: &[String],
    token: &str,
    trust: &Trust,
) -> Result<Vec<WorkerHandle>, ClusterError> {
    let mut out = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let pin = trust.pin(addr).map_err(|e| worker_err(addr, e.what))?;
        let mut client = strata_proto::connect(addr, token, pin)
            .await
            .map_err(|e| worker_err(addr, e))?;
        let caps = client
            .capabilities(v1::CapabilitiesRequest {})
            .await
            .map_err(|e| {
                worker_err(
                    addr,
                    format!("capabilities: {}", strata_proto::link::status_text(&e)),
                )
            })?
            .into_inner();
        tracing::info!(
            "worker {addr}: {} {}, {} MiB free, {:.1} GB/s",
            caps.backend,
            caps.device_name,
            caps.free_memory_bytes >> 20,
            caps.matvec_bytes_per_second / 1e9
        );
        let link = super::link_or_warn(addr, &client).await;
        out.push(WorkerHandle {
            addr: addr.clone(),
            pin,
            client,
            caps,
            link,
            peer_links: BTreeMap::new(),
            unreachable: BTreeSet::new(),
        });
    }
    super::measure_peer_links(&mut out, &mut Default::default(), |_| true).await;
    Ok(out)
}

/// The planner's view of connected workers. Workers on one host (same
/// address host part) are kept adjacent and linked as same-host, and those
/// with the same device and threads there are planned at one speed.
pub fn worker_specs(workers: &[WorkerHandle]) -> Vec<WorkerSpec> {
    workers
        .iter()
        .map(|w| {
            let backend = if w.caps.backend == "cuda" {
                Backend::Cuda
            } else {
                Backend::Cpu
            };
            let host = super::link_probe::host_of(&w.addr).to_string();
            // Same device and threads on one host: one speed (planner/noise.rs).
            let hardware = format!(
                "{} {} x{}",
                w.caps.backend, w.caps.device_name, w.caps.threads
            );
            let mut spec = WorkerSpec::new(w.addr.clone(), backend, host, w.caps.free_memory_bytes)
                .with_link(w.link.unwrap_or_default())
                .with_peer_links(w.peer_links.clone())
                .with_unreachable(w.unreachable.iter().cloned())
                .with_hardware(hardware);
            if w.caps.matvec_bytes_per_second > 0.0 && w.caps.matvec_bytes_per_second.is_finite() {
                spec = spec.with_bandwidth(w.caps.matvec_bytes_per_second);
            }
            spec
        })
        .collect()
}

/// One stage to load: which worker, which layers, and (optionally) where
/// the worker can read the model itself.
#[derive(Clone)]
pub struct StageAssignment {
    pub worker: WorkerHandle,
    pub range: LayerRange,
    /// A path valid on the worker's machine (the embedded worker), checked
    /// against the digest there.
    pub model_path: Option<String>,
    /// The planner's bytes and compute time per token for this stage.
    pub planned_bytes: u64,
    pub est_time_per_token_s: f64,
}

/// What loading reports as it goes.
#[derive(Debug, Clone)]
pub enum LoadEvent {
    /// The worker has no copy: sending `total_bytes` of tensors.
    Pushing {
        stage: usize,
        addr: String,
        sent_bytes: u64,
        total_bytes: u64,
    },
    /// A progress message from the worker.
    Progress {
        stage: usize,
        addr: String,
        progress: v1::LoadProgress,
    },
}

/// What every stage is loaded with.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub digest: String,
    /// KV capacity of each stage, in tokens over all sequences.
    pub ctx_tokens: u64,
    pub act_dtype: v1::ActDtype,
    /// How each stage stores K and V.
    pub kv_type: KvType,
    /// Tokens in one frame, and positions of one sequence: the plan's
    /// bounds, enforced by each stage.
    pub max_batch_tokens: u32,
    pub max_seq_tokens: u64,
    /// Slice hashes of the model, remembered across loads.
    pub hashes: Arc<SliceHashes>,
    /// What carries each hop: QUIC only to a next stage that serves it.
    pub transport: TransportKind,
}

/// Loads every stage, last first, pushing the slice to a worker that has no
/// copy of the model and retrying.
pub async fn load_stages(
    stages: &[StageAssignment],
    model: Arc<GgufFile>,
    options: &LoadOptions,
    mut on_event: impl FnMut(LoadEvent),
) -> Result<(), ClusterError> {
    let n_layers = strata_model::arch::ModelSpec::from_gguf(&model)
        .map_err(|e| ClusterError::Model(e.to_string()))?
        .n_layers;
    for (i, st) in stages.iter().enumerate().rev() {
        let slice_hash = {
            let (model, hashes, range) = (model.clone(), options.hashes.clone(), st.range);
            // Reads every byte of the slice the first time: off the async threads.
            tokio::task::spawn_blocking(move || hashes.get(&model, range, n_layers))
                .await
                .map_err(|e| ClusterError::Model(format!("hashing layers {range}: {e}")))?
        };
        let next = stages
            .get(i + 1)
            .map(|n| n.worker.spec())
            .unwrap_or_default();
        let req = v1::LoadSliceRequest {
            model_digest: options.digest.clone(),
            layers: Some(v1::LayerRange {
                first: st.range.first as u32,
                end: st.range.end as u32,
            }),
            ctx_tokens: options.ctx_tokens,
            kv_type: kv_type_to_proto(options.kv_type) as i32,
            next_stage_addr: next,
            model_path: st.model_path.clone().unwrap_or_default(),
            act_dtype: options.act_dtype as i32,
            max_batch_tokens: options.max_batch_tokens,
            max_seq_tokens: options.max_seq_tokens,
            slice_hash: slice_hash.clone(),
            next_transport: match stages.get(i + 1) {
                Some(n) if n.worker.quic(options.transport) => TransportKind::Quic,
                // The compute thread's own link needs TLS.
                Some(n) if options.transport == TransportKind::Tcp && n.worker.pin.is_some() => {
                    TransportKind::Tcp
                }
                _ => TransportKind::Grpc,
            }
            .to_proto() as i32,
            next_process_id: stages.get(i + 1).map_or(0, |n| n.worker.caps.process_id),
        };
        match load_one(i, st, req.clone(), &mut on_event).await {
            Err(e) if e.code() == tonic::Code::NotFound => {
                let push = (options.digest.as_str(), slice_hash.as_str());
                push_with_progress(i, st, model.clone(), push, &mut on_event).await?;
                load_one(i, st, req, &mut on_event)
                    .await
                    .map_err(|e| worker_err(&st.worker.addr, e.message()))?;
            }
            Err(e) => {
                return Err(worker_err(
                    &st.worker.addr,
                    format!("loading layers {}: {}", st.range, e.message()),
                ))
            }
            Ok(()) => {}
        }
    }
    Ok(())
}

async fn load_one(
    stage: usize,
    st: &StageAssignment,
    req: v1::LoadSliceRequest,
    on_event: &mut impl FnMut(LoadEvent),
) -> Result<(), tonic::Status> {
    let mut client = st.worker.client.clone();
    let mut stream = client.load_slice(req).await?.into_inner();
    let mut ready = false;
    while let Some(progress) = stream.message().await? {
        ready |= progress.phase == v1::load_progress::Phase::Ready as i32;
        on_event(LoadEvent::Progress {
            stage,
            addr: st.worker.addr.clone(),
            progress,
        });
    }
    if !ready {
        return Err(tonic::Status::internal("the load ended without READY"));
    }
    Ok(())
}

/// Pushes the slice, reporting bytes sent about four times a second.
async fn push_with_progress(
    stage: usize,
    st: &StageAssignment,
    model: Arc<GgufFile>,
    (digest, slice_hash): (&str, &str),
    on_event: &mut impl FnMut(LoadEvent),
) -> Result<(), ClusterError> {
    let total_bytes: u64 = {
        let n_layers = strata_model::arch::ModelSpec::from_gguf(&model)
            .map_err(|e| ClusterError::Model(e.to_string()))?
            .n_layers;
        slice_tensors(&model, st.range, n_layers)
            .iter()
            .map(|t| t.size_bytes)
            .sum()
    };
    let sent = Arc::new(AtomicU64::new(0));
    let mut client = st.worker.client.clone();
    let addr = st.worker.addr.clone();
    tracing::info!(
        "worker {addr} has no copy of the model: pushing layers {} ({} MiB)",
        st.range,
        total_bytes >> 20
    );
    let push = super::push::push_slice_counted(
        &mut client,
        model,
        digest,
        st.range,
        slice_hash,
        sent.clone(),
    );
    tokio::pin!(push);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let result = loop {
        tokio::select! {
            r = &mut push => break r,
            _ = tick.tick() => on_event(LoadEvent::Pushing {
                stage, addr: addr.clone(), sent_bytes: sent.load(Ordering::Relaxed), total_bytes,
            }),
        }
    };
    on_event(LoadEvent::Pushing {
        stage,
        addr: addr.clone(),
        sent_bytes: sent.load(Ordering::Relaxed),
        total_bytes,
    });
    result.map(drop).map_err(|e| {
        worker_err(
            &addr,
            format!("pushing layers {}: {}", st.range, e.message()),
        )
    })
}

/// `LoadSlice.kv_type` for a KV type.
pub fn kv_type_to_proto(kv_type: KvType) -> v1::KvType {
    match kv_type {
        KvType::F16 => v1::KvType::F16,
        KvType::Q8_0 => v1::KvType::Q80,
        KvType::Q4_0 => v1::KvType::Q40,
    }
}
