//! The pool: every worker the coordinator was given, which of them answer,
//! and a pipeline planned and loaded over those that do. Start-up and every
//! failover go through the same three calls: [`Pool::survey`],
//! [`Pool::plan`] and [`Pool::load`]. [`supervise`] watches the running
//! pipeline and rebuilds it when a worker is lost or comes back.

mod supervise;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use strata_model::arch::ModelSpec;
use strata_model::profile::{KvType, MemoryProfile};
use strata_model::slice::LayerRange;
use strata_model::slice_hash::SliceHashes;
use strata_model::GgufFile;
use strata_proto::transport::quic::QuicPeer;
use strata_proto::transport::tcp_peer::TcpPeer;
use strata_proto::transport::{Transport, TransportKind};
use strata_proto::{v1, Trust, WorkerClient};

use crate::cluster::{
    kv_type_to_proto, link_or_warn, load_stages, measure_peer_links, worker_specs, LoadEvent,
    LoadOptions, PeerLinks, StageAssignment, WorkerHandle,
};
use crate::engine::{StageLink, StageView};
use crate::planner::{plan, table, Link, PlanRequest};

pub use supervise::{supervise, Attached, WATCH_INTERVAL};

/// How long a worker may take to answer one probe before it counts as lost.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether two answers come from one stage of one worker process, reached
/// under two addresses (`localhost` and `127.0.0.1`, a relay): planned
/// twice, it would count its memory twice. Workers that do not say who
/// they are (`process_id` or `listen_port` 0) are taken as different.
fn same_stage(a: &v1::CapabilitiesReply, b: &v1::CapabilitiesReply) -> bool {
    let id = |c: &v1::CapabilitiesReply| (c.process_id, c.listen_port);
    a.process_id != 0 && a.listen_port != 0 && id(a) == id(b)
}

/// What the pool is given.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub model_path: PathBuf,
    /// Worker addresses, in no particular order (the planner orders them).
    pub workers: Vec<String>,
    pub token: String,
    /// Each worker's pinned certificate, or plaintext links.
    pub trust: Trust,
    /// Workers whose machine has the model at `model_path`.
    pub local_workers: Vec<String>,
    pub ctx_size: usize,
    pub parallel: usize,
    pub batch_tokens: usize,
    pub act_dtype: v1::ActDtype,
    /// How every stage stores K and V; the planner budgets it.
    pub kv_type: KvType,
    /// What carries the data plane's hops.
    pub transport: TransportKind,
    /// Add the other stages a worker's process serves (`strata worker
    /// --gpus`) to the pool; off where the worker list is chosen for the
    /// pool (a models file shares its workers between models).
    pub box_mates: bool,
}

/// Which workers answer.
pub struct Survey {
    /// Answering, idle (their old slice unloaded), with their full memory.
    pub alive: Vec<WorkerHandle>,
    /// Address and why, for each that does not.
    pub lost: BTreeMap<String, String>,
    /// Addresses that reach a stage already in `alive` (by its address
    /// there): planned once, and never unloaded through the second name.
    pub same: BTreeMap<String, String>,
}

/// What a probe found at an address.
pub enum Probed {
    /// A worker, unloaded, with what it offers.
    Idle(WorkerHandle),
    /// A stage already known, at this address: left as it is.
    Same(String),
}

impl Survey {
    /// "addr (why), ..." of the workers that do not answer.
    pub fn lost_note(&self) -> String {
        let lost: Vec<String> = self
            .lost
            .iter()
            .map(|(a, w)| format!("{a} ({w})"))
            .collect();
        lost.join(", ")
    }
}

pub struct Pool {
    settings: PoolSettings,
    model: Arc<GgufFile>,
    hp: ModelSpec,
    digest: String,
    clients: BTreeMap<String, WorkerClient>,
    /// Links measured so far, by address: a re-plan after a failover does
    /// not pay the round trips again.
    links: BTreeMap<String, Link>,
    /// Links measured between workers, kept the same way.
    peer_links: PeerLinks,
    /// Slice hashes, so a failover's reload does not read the model again.
    hashes: Arc<SliceHashes>,
    /// QUIC connections to the attached pipeline's data planes: made anew
    /// at every attach (a restarted worker's old connection would look
    /// open until its idle timeout), the previous ones closed then.
    quic: BTreeMap<String, Arc<QuicPeer>>,
    /// The other stages of the workers' boxes, as the last probes named
    /// them (found anew at every survey).
    mates: Vec<String>,
}

impl Pool {
    pub fn new(
        settings: PoolSettings,
        model: Arc<GgufFile>,
        hp: ModelSpec,
        digest: String,
    ) -> Pool {
        Pool {
            settings,
            model,
            hp,
            digest,
            clients: BTreeMap::new(),
            links: BTreeMap::new(),
            peer_links: PeerLinks::new(),
            hashes: Arc::default(),
            quic: BTreeMap::new(),
            mates: Vec::new(),
        }
    }

    /// The box-mates found so far ([`PoolSettings::box_mates`]).
    pub fn box_mates(&self) -> &[String] {
        &self.mates
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    /// A client for `addr`, connected once and kept (it reconnects by itself).
    async fn client(&mut self, addr: &str) -> Result<WorkerClient, String> {
        if let Some(c) = self.clients.get(addr) {
            return Ok(c.clone());
        }
        let pin = self.settings.trust.pin(addr).map_err(|e| e.what)?;
        let c = within(strata_proto::connect(addr, &self.settings.token, pin))
            .await?
            .map_err(|e| e.to_string())?;
        self.clients.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// What the engine needs of each stage: its client (releases, disk
    /// listings) and its data plane, over QUIC or TCP links where asked for
    /// and served (gRPC, with a warning, when they fail to open).
    pub async fn stage_links(&mut self, stages: &[StageAssignment]) -> Vec<StageLink> {
        let mut links = Vec::new();
        self.quic.clear();
        for s in stages {
            let w = &s.worker;
            let data: Arc<dyn Transport> = match (self.settings.transport, w.pin) {
                // Falls back to gRPC by itself, call by call.
                (TransportKind::Tcp, Some(pin)) => Arc::new(TcpPeer::new(
                    &w.addr,
                    &self.settings.token,
                    pin,
                    w.client.clone(),
                )),
                _ => match self.quic_peer(w).await {
                    Some(peer) => peer,
                    None => Arc::new(w.client.clone()),
                },
            };
            links.push(StageLink {
                client: w.client.clone(),
                addr: w.addr.clone(),
                data,
            });
        }
        let t = self.settings.transport;
        let slow: Vec<&str> = stages
            .iter()
            .filter(|s| match t {
                TransportKind::Quic => !s.worker.quic(t),
                TransportKind::Tcp => s.worker.pin.is_none(),
                TransportKind::Grpc => false,
            })
            .map(|s| s.worker.addr.as_str())
            .collect();
        if !slow.is_empty() {
            let msg = format!(
                "--transport {t}: {} serve(s) no {t} (plaintext, or an older worker); their hops use gRPC",
                slow.join(", ")
            );
            // TCP is the default: a plaintext pool chose gRPC's hops.
            match t {
                TransportKind::Tcp => tracing::info!("{msg}"),
                _ => tracing::warn!("{msg}"),
            }
        }
        links
    }

    async fn quic_peer(&mut self, w: &WorkerHandle) -> Option<Arc<QuicPeer>> {
        let pin = w.pin.filter(|_| w.quic(self.settings.transport))?;
        match QuicPeer::connect(&w.addr, &self.settings.token, pin).await {
            Ok(peer) => {
                tracing::info!("data plane of {} over QUIC", w.addr);
                let peer = Arc::new(peer);
                self.quic.insert(w.addr.clone(), peer.clone());
                Some(peer)
            }
            Err(e) => {
                tracing::warn!("{e}; its data plane goes over gRPC");
                None
            }
        }
    }

    /// The link to `addr`, measured on first contact and then kept, as its
    /// client is.
    async fn link(&mut self, addr: &str, client: &WorkerClient) -> Option<Link> {
        if let Some(link) = self.links.get(addr) {
            return Some(*link);
        }
        let link = link_or_warn(addr, client).await?;
        self.links.insert(addr.to_string(), link);
        Some(link)
    }

    /// Asks every worker whether it is there and healthy, unloads the ones
    /// that are (a new plan replaces every slice, and their memory counts
    /// whole), and reads what they offer. Workers in `known_lost` (found
    /// silent a moment ago) are not asked again.
    pub async fn survey(&mut self, known_lost: &BTreeMap<String, String>) -> Survey {
        let mut alive = Vec::new();
        let mut lost = known_lost.clone();
        let mut same = BTreeMap::new();
        self.mates.clear();
        // By index: a worker's box-mates join the list as its probe finds them.
        let mut i = 0;
        while let Some(addr) = self
            .settings
            .workers
            .iter()
            .chain(&self.mates)
            .nth(i)
            .cloned()
        {
            i += 1;
            if known_lost.contains_key(&addr) {
                continue;
            }
            match self.probe_idle(&addr, &alive).await {
                Ok(Probed::Idle(handle)) => alive.push(handle),
                Ok(Probed::Same(first)) => {
                    same.insert(addr, first);
                }
                Err(why) => {
                    tracing::warn!("worker {addr}: {why}");
                    lost.insert(addr, why);
                }
            }
        }
        // Every worker is idle now: each may measure its links.
        measure_peer_links(&mut alive, &mut self.peer_links, |_| true).await;
        Survey { alive, lost, same }
    }

    /// The other stages `addr`'s process serves (`strata worker --gpus`:
    /// one per device, `sibling_ports`) join the pool as workers of their
    /// own, at the same host and pinned to the same certificate.
    fn add_box_mates(&mut self, addr: &str, caps: &v1::CapabilitiesReply) {
        // A box has a few devices; a longer list is not believed whole.
        const MAX_BOX_STAGES: usize = 16;
        if !self.settings.box_mates {
            return;
        }
        let Some((host, _)) = addr.rsplit_once(':') else {
            return;
        };
        let pin = self.settings.trust.pin(addr).ok().flatten();
        for &port in caps.sibling_ports.iter().take(MAX_BOX_STAGES) {
            let Some(port) = u16::try_from(port).ok().filter(|p| *p != 0) else {
                continue;
            };
            let mate = format!("{host}:{port}");
            if self.settings.workers.contains(&mate) || self.mates.contains(&mate) {
                continue;
            }
            tracing::info!("worker {addr}: its box also serves a stage at {mate}");
            if let Some(pin) = pin {
                self.settings.trust.pin_also(&mate, pin);
            }
            self.mates.push(mate);
        }
    }

    /// Unloads `addr` (it must not be in the attached pipeline) and reads
    /// what it offers; unless it is a stage of `known` under another
    /// address, which is left as it is.
    pub async fn probe_idle(
        &mut self,
        addr: &str,
        known: &[WorkerHandle],
    ) -> Result<Probed, String> {
        let mut client = self.client(addr).await?;
        let health = within(client.health(v1::HealthRequest {}))
            .await?
            .map_err(|e| format!("is unreachable: {}", strata_proto::link::status_text(&e)))?
            .into_inner();
        if health.status == v1::health_reply::Status::Failed as i32 {
            // Its box's other devices may still serve.
            if let Ok(Ok(caps)) = within(client.capabilities(v1::CapabilitiesRequest {})).await {
                self.add_box_mates(addr, &caps.into_inner());
            }
            return Err(format!("reports a failure: {}", health.message));
        }
        let who = within(client.capabilities(v1::CapabilitiesRequest {}))
            .await?
            .map_err(|e| format!("capabilities: {}", e.message()))?
            .into_inner();
        if let Some(first) = known.iter().find(|h| same_stage(&h.caps, &who)) {
            tracing::warn!(
                "worker {addr} is the stage already reached at {}: planned once",
                first.addr
            );
            return Ok(Probed::Same(first.addr.clone()));
        }
        within(client.unload(v1::UnloadRequest {}))
            .await?
            .map_err(|e| format!("unload: {}", e.message()))?;
        let caps = within(client.capabilities(v1::CapabilitiesRequest {}))
            .await?
            .map_err(|e| format!("capabilities: {}", e.message()))?
            .into_inner();
        self.add_box_mates(addr, &caps);
        let link = self.link(addr, &client).await;
        Ok(Probed::Idle(WorkerHandle {
            addr: addr.to_string(),
            pin: self.settings.trust.pin(addr).map_err(|e| e.what)?,
            client,
            caps,
            link,
            peer_links: BTreeMap::new(),
            unreachable: Default::default(),
        }))
    }

    /// Fills `alive`'s links to each other; only `addr` (idle, the others
    /// serving) measures the ones not known yet.
    pub async fn measure_links_of(&mut self, alive: &mut [WorkerHandle], addr: &str) {
        measure_peer_links(alive, &mut self.peer_links, |a| a == addr).await;
    }

    /// The context per sequence: `--ctx-size` capped at the model's.
    pub fn ctx_size(&self) -> usize {
        self.settings.ctx_size.min(self.hp.context_length.max(1))
    }

    /// Places the model on `alive` with the planner. Returns the stages and
    /// the plan table.
    pub fn plan(&self, alive: &[WorkerHandle]) -> Result<(Vec<StageAssignment>, String), String> {
        if alive.is_empty() {
            return Err("no worker answers".into());
        }
        let kv_type = kv_type_to_proto(self.settings.kv_type) as i32;
        let specs: Vec<_> = worker_specs(alive)
            .into_iter()
            .zip(alive)
            .map(|(spec, w)| {
                // The layers whose KV it kept on disk for this model and type.
                let saved = w
                    .caps
                    .saved_layers
                    .iter()
                    .filter(|s| s.model_digest == self.digest && s.kv_type == kv_type)
                    .flat_map(|s| s.layers.iter().map(|&l| l as usize))
                    .filter(|&l| l < self.hp.n_layers);
                spec.with_saved_layers(saved)
            })
            .collect();
        let req = plan_request(&self.settings, &self.model, &self.hp);
        let placement = plan(&req, &specs).map_err(|e| e.to_string())?;
        let shown = table(&placement, &specs);
        let stages = placement
            .stages
            .iter()
            .map(|s| {
                let w = alive[s.worker].clone();
                let local = self.settings.local_workers.contains(&w.addr);
                StageAssignment {
                    worker: w,
                    range: LayerRange {
                        first: s.first_layer,
                        end: s.end_layer,
                    },
                    model_path: local.then(|| self.settings.model_path.display().to_string()),
                    planned_bytes: s.total_bytes(),
                    est_time_per_token_s: s.time_per_token_s,
                }
            })
            .collect();
        Ok((stages, shown))
    }

    /// Loads every stage (last first), each with KV for `parallel` whole
    /// sequences in whole blocks.
    pub async fn load(
        &self,
        stages: &[StageAssignment],
        on_event: impl FnMut(LoadEvent),
    ) -> Result<(), String> {
        // Here, not in `plan`: a trial plan (is a returned worker wanted?)
        // loads nothing and warns of nothing.
        for pair in stages.windows(2) {
            let (from, to) = (&pair[0].worker, &pair[1].worker.addr);
            if from.unreachable.contains(to) {
                tracing::warn!(
                    "worker {} could not connect to {to} when asked, and no placement tried \
                     avoids that hop: the plan keeps it (the worker's log says why)",
                    from.addr
                );
            }
        }
        let mut block = 1usize;
        for s in stages {
            let h = within(s.worker.client.clone().health(v1::HealthRequest {}))
                .await
                .map_err(|e| format!("worker {}: health: {e}", s.worker.addr))?
                .map_err(|e| format!("worker {}: health: {}", s.worker.addr, e.message()))?;
            block = block.max(h.into_inner().kv_block_tokens.max(1) as usize);
        }
        let ctx_tokens = (self.ctx_size().div_ceil(block) * block * self.settings.parallel) as u64;
        let options = LoadOptions {
            digest: self.digest.clone(),
            ctx_tokens,
            act_dtype: self.settings.act_dtype,
            kv_type: self.settings.kv_type,
            max_batch_tokens: self.settings.batch_tokens.min(u32::MAX as usize) as u32,
            max_seq_tokens: self.ctx_size() as u64,
            hashes: self.hashes.clone(),
            transport: self.settings.transport,
        };
        load_stages(stages, self.model.clone(), &options, on_event)
            .await
            .map_err(|e| e.to_string())
    }
}

/// What the planner is asked for a model served with `settings`.
pub fn plan_request(settings: &PoolSettings, model: &GgufFile, hp: &ModelSpec) -> PlanRequest {
    let profile = MemoryProfile::from_gguf(model, hp);
    let act_bytes = if settings.act_dtype == v1::ActDtype::F32 {
        4
    } else {
        2
    };
    PlanRequest {
        parallel: settings.parallel,
        max_batch_tokens: settings.batch_tokens,
        activation_bytes_per_token: act_bytes * hp.d_model as u64,
        ..PlanRequest::new(
            profile,
            hp.d_model,
            settings.ctx_size.min(hp.context_length.max(1)),
            settings.kv_type,
        )
    }
}

/// What `/health` and `/v1/pool` show of each stage.
pub fn stage_views(stages: &[StageAssignment], kv_type: KvType) -> Vec<StageView> {
    stages
        .iter()
        .enumerate()
        .map(|(i, s)| StageView {
            addr: s.worker.addr.clone(),
            first_layer: s.range.first,
            end_layer: s.range.end,
            kv_type: kv_type.name().to_string(),
            backend: s.worker.caps.backend.clone(),
            device_name: s.worker.caps.device_name.clone(),
            total_memory_bytes: s.worker.caps.total_memory_bytes,
            offered_memory_bytes: s.worker.caps.free_memory_bytes,
            planned_bytes: s.planned_bytes,
            est_time_per_token_s: s.est_time_per_token_s,
            link: s.worker.link,
            // Measured this way, else the other way round.
            next_link: stages.get(i + 1).and_then(|next| {
                let (this, next) = (&s.worker, &next.worker);
                (this.peer_links.get(&next.addr))
                    .or_else(|| next.peer_links.get(&this.addr))
                    .copied()
            }),
            client: s.worker.client.clone(),
        })
        .collect()
}

/// `fut`, or an error once [`PROBE_TIMEOUT`] passes.
async fn within<T>(fut: impl std::future::Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(PROBE_TIMEOUT, fut)
        .await
        .map_err(|_| format!("does not answer within {} s", PROBE_TIMEOUT.as_secs()))
}
