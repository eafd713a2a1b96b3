//! The link to the next stage: one long-lived `Forward` stream (opened when
//! the slice loads, reopened on the next frame if it breaks), whose replies
//! are routed back to the upstream stream each batch came from. Frames on a
//! reply route get their replies straight from the replying stage; if the
//! link breaks, their coordinators hear of it on those routes.
//!
//! A remote next stage is reached by gRPC or QUIC, as the coordinator's
//! `LoadSlice.next_transport` says (`strata_proto::transport`).
//!
//! A next stage in this process (`local_stages.rs`) gets the frames in
//! memory: the same stream of frames and replies, without gRPC or
//! serialisation. A device-resident hand-off (hidden states left on the GPU
//! for a next stage on the same machine) would slot in as another kind of
//! [`NextStage`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use strata_proto::{v1, Trust, WorkerClient};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Status};

use strata_proto::transport::quic::QuicPeer;
use strata_proto::transport::{Transport, TransportKind};

use super::reply_routes::ReplyRoutes;
use super::WorkerService;

pub type ReplySink = mpsc::Sender<Result<v1::StageReply, Status>>;

/// The replies of a link, whichever way the next stage is reached.
type Replies = strata_proto::transport::ReplyStream;

/// Where the next stage runs.
enum NextStage {
    /// Another process: a gRPC `Forward` stream, connected on first use.
    Remote(Box<RemoteStage>),
    /// This process: frames go to its frame loop as they are.
    Local(WorkerService),
}

struct RemoteStage {
    token: String,
    trust: Trust,
    transport: TransportKind,
    client: tokio::sync::Mutex<Option<WorkerClient>>,
    /// The QUIC connection, once made (the data stream reopens on it);
    /// `Err` once QUIC failed: this link then stays on gRPC rather than
    /// pay a handshake timeout at every reopen.
    quic: tokio::sync::Mutex<Result<Option<Arc<QuicPeer>>, ()>>,
}

type Routes = Arc<Mutex<HashMap<u64, ReplySink>>>;

struct Link {
    frames: mpsc::Sender<v1::BatchFrame>,
    /// The stream goes over QUIC.
    quic: bool,
    routes: Routes,
    /// Reply routes of the frames sent on this link.
    direct: Arc<Mutex<HashSet<u64>>>,
}

pub struct Downstream {
    addr: String,
    next: NextStage,
    link: tokio::sync::Mutex<Option<Link>>,
    reply_routes: Arc<ReplyRoutes>,
}

impl Downstream {
    /// The link to `addr`: in memory when a service of this process listens
    /// there with the certificate `trust` pins (`next_process`: the process
    /// the coordinator says it runs in), else over the network.
    pub fn new(
        addr: String,
        token: String,
        trust: Trust,
        transport: TransportKind,
        next_process: u64,
        reply_routes: Arc<ReplyRoutes>,
    ) -> Self {
        let local = trust
            .pin(&addr)
            .ok()
            .and_then(|pin| super::local_stages::find(&addr, pin, next_process));
        let next = match local {
            Some(service) => {
                tracing::info!("next stage {addr} runs in this process: frames go in memory");
                NextStage::Local(service)
            }
            None => NextStage::Remote(Box::new(RemoteStage {
                token,
                trust,
                transport,
                client: tokio::sync::Mutex::new(None),
                quic: tokio::sync::Mutex::new(Ok(None)),
            })),
        };
        Downstream {
            addr,
            next,
            link: tokio::sync::Mutex::new(None),
            reply_routes,
        }
    }

    /// Whether frames reach the next stage in memory.
    pub fn is_local(&self) -> bool {
        matches!(self.next, NextStage::Local(_))
    }

    async fn client(&self) -> Result<WorkerClient, String> {
        let NextStage::Remote(remote) = &self.next else {
            return Err(format!("next stage {} is in this process", self.addr));
        };
        let RemoteStage {
            token,
            trust,
            client,
            ..
        } = remote.as_ref();
        let mut guard = client.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let pin = trust.pin(&self.addr).map_err(|e| e.to_string())?;
        let c = strata_proto::connect(&self.addr, token, pin)
            .await
            .map_err(|e| e.to_string())?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// What carries the data stream: QUIC when the coordinator asked for
    /// it and the next stage answers on it (the connection is kept), else
    /// the gRPC client.
    async fn transport(&self, remote: &RemoteStage) -> Result<Arc<dyn Transport>, String> {
        let mut quic = remote.quic.lock().await;
        if remote.transport == TransportKind::Quic && quic.is_ok() {
            if let Ok(Some(peer)) = quic.as_ref() {
                if peer.is_open() {
                    return Ok(peer.clone());
                }
            }
            let pin = remote.trust.pin(&self.addr).map_err(|e| e.to_string())?;
            match pin {
                Some(pin) => match QuicPeer::connect(&self.addr, &remote.token, pin).await {
                    Ok(peer) => {
                        tracing::info!("data stream to next stage {} over QUIC", self.addr);
                        let peer = Arc::new(peer);
                        *quic = Ok(Some(peer.clone()));
                        return Ok(peer);
                    }
                    Err(e) => {
                        tracing::warn!("{e}; the data stream goes over gRPC");
                        *quic = Err(());
                    }
                },
                None => tracing::warn!(
                    "QUIC asked for, but the link to {} is plaintext (--insecure); the data stream goes over gRPC",
                    self.addr
                ),
            }
        }
        Ok(Arc::new(self.client().await?))
    }

    /// Opens the data stream now (at load time) so the first frame does not
    /// pay for it.
    pub async fn open(&self) -> Result<(), String> {
        let mut link = self.link.lock().await;
        if link.as_ref().is_none_or(|l| l.frames.is_closed()) {
            *link = Some(self.open_link().await?);
        }
        Ok(())
    }

    async fn open_link(&self) -> Result<Link, String> {
        let (tx, rx) = mpsc::channel::<v1::BatchFrame>(64);
        let frames = ReceiverStream::new(rx);
        let mut quic = false;
        let mut replies: Replies = match &self.next {
            // Its own task, as a gRPC stream has: this stage goes on to its
            // next frame while the next stage computes.
            NextStage::Local(service) => Box::pin(service.serve_frames(frames.map(Ok))),
            NextStage::Remote(remote) => {
                let transport = self.transport(remote).await?;
                quic = transport.name() == "quic";
                transport.forward(frames).await.map_err(|e| {
                    format!(
                        "opening the data stream to next stage {} ({}): {}",
                        self.addr,
                        transport.name(),
                        e.message()
                    )
                })?
            }
        };
        let routes: Routes = Arc::default();
        let relay_routes = routes.clone();
        let direct: Arc<Mutex<HashSet<u64>>> = Arc::default();
        let relay_direct = direct.clone();
        let reply_routes = self.reply_routes.clone();
        let addr = self.addr.clone();
        tokio::spawn(async move {
            let end = loop {
                match replies.next().await {
                    Some(Ok(reply)) => {
                        tracing::debug!(target: "strata::hop", batch_id = reply.batch_id, "reply back");
                        let sink = relay_routes
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&reply.batch_id);
                        match sink {
                            Some(sink) => {
                                let _ = sink.send(Ok(reply)).await;
                            }
                            None => tracing::warn!(
                                "reply from {addr} for unknown batch {}",
                                reply.batch_id
                            ),
                        }
                    }
                    None => break format!("next stage {addr} closed the data stream"),
                    Some(Err(e)) => {
                        break format!("data stream to next stage {addr}: {}", e.message())
                    }
                }
            };
            tracing::warn!("{end}");
            let pending: Vec<(u64, ReplySink)> = relay_routes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain()
                .collect();
            for (batch_id, sink) in pending {
                let _ = sink
                    .send(Ok(super::stage_thread::lost_reply(batch_id, end.clone())))
                    .await;
            }
            let direct: Vec<u64> = relay_direct
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain()
                .collect();
            for route in direct {
                let lost = super::stage_thread::lost_reply(0, end.clone());
                let _ = reply_routes.send(route, lost).await;
            }
        });
        Ok(Link {
            frames: tx,
            quic,
            routes,
            direct,
        })
    }

    /// Sends a frame on; its reply will go to `sink`, or on its reply route.
    /// Says whether it went over QUIC.
    pub async fn send(&self, frame: v1::BatchFrame, sink: ReplySink) -> Result<bool, String> {
        let (batch_id, route) = frame
            .header
            .as_ref()
            .map_or((0, 0), |h| (h.batch_id, h.reply_route));
        let mut link = self.link.lock().await;
        if link.as_ref().is_none_or(|l| l.frames.is_closed()) {
            *link = Some(self.open_link().await?);
        }
        let Some(l) = link.as_ref() else {
            return Err("no link".into());
        };
        if route != 0 {
            // Its reply will not pass here: no entry to remove later.
            l.direct
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(route);
        } else {
            l.routes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(batch_id, sink);
        }
        if l.frames.send(frame).await.is_err() {
            l.routes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&batch_id);
            *link = None;
            return Err(format!("data stream to next stage {} is closed", self.addr));
        }
        Ok(l.quic)
    }

    /// Releases sequences on the next stage (which passes it on).
    pub async fn release(&self, req: v1::ReleaseRequest) -> Result<u32, String> {
        if let NextStage::Local(service) = &self.next {
            return service
                .release_everywhere(req)
                .await
                .map_err(|e| format!("release on next stage {}: {}", self.addr, e.message()));
        }
        let mut client = self.client().await?;
        let reply = client
            .release(req)
            .await
            .map_err(|e| format!("release on next stage {}: {}", self.addr, e.message()))?;
        Ok(reply.into_inner().stages)
    }

    /// The prefix blocks the stages from the next one on hold on disk.
    pub async fn disk_prefixes(&self) -> Result<v1::DiskPrefixesReply, String> {
        if let NextStage::Local(service) = &self.next {
            use strata_proto::v1::worker_server::Worker;
            return service
                .disk_prefixes(Request::new(v1::DiskPrefixesRequest {}))
                .await
                .map(|r| r.into_inner())
                .map_err(|e| {
                    format!("disk prefixes of next stage {}: {}", self.addr, e.message())
                });
        }
        let mut client = self.client().await?;
        let reply = client
            .disk_prefixes(v1::DiskPrefixesRequest {})
            .await
            .map_err(|e| format!("disk prefixes of next stage {}: {}", self.addr, e.message()))?;
        Ok(reply.into_inner())
    }
}
