//! The link to the next stage: one long-lived `Forward` stream (opened when
//! the slice loads, reopened on the next frame if it breaks), whose replies
//! are routed back to the upstream stream each batch came from. Frames on a
//! reply route get their replies straight from the replying stage; if the
//! link breaks, their coordinators hear of it on those routes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use strata_proto::{v1, Trust, WorkerClient};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::reply_routes::ReplyRoutes;

pub type ReplySink = mpsc::Sender<Result<v1::StageReply, Status>>;

type Routes = Arc<Mutex<HashMap<u64, ReplySink>>>;

struct Link {
    frames: mpsc::Sender<v1::BatchFrame>,
    routes: Routes,
    /// Reply routes of the frames sent on this link.
    direct: Arc<Mutex<HashSet<u64>>>,
}

pub struct Downstream {
    addr: String,
    token: String,
    trust: Trust,
    client: tokio::sync::Mutex<Option<WorkerClient>>,
    link: tokio::sync::Mutex<Option<Link>>,
    reply_routes: Arc<ReplyRoutes>,
}

impl Downstream {
    pub fn new(addr: String, token: String, trust: Trust, reply_routes: Arc<ReplyRoutes>) -> Self {
        Downstream {
            addr,
            token,
            trust,
            client: tokio::sync::Mutex::new(None),
            link: tokio::sync::Mutex::new(None),
            reply_routes,
        }
    }

    async fn client(&self) -> Result<WorkerClient, String> {
        let mut guard = self.client.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let pin = self.trust.pin(&self.addr).map_err(|e| e.to_string())?;
        let c = strata_proto::connect(&self.addr, &self.token, pin)
            .await
            .map_err(|e| e.to_string())?;
        *guard = Some(c.clone());
        Ok(c)
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
        let mut client = self.client().await?;
        let (tx, rx) = mpsc::channel::<v1::BatchFrame>(64);
        let mut replies = client
            .forward(ReceiverStream::new(rx))
            .await
            .map_err(|e| {
                format!(
                    "opening the data stream to next stage {}: {}",
                    self.addr,
                    e.message()
                )
            })?
            .into_inner();
        let routes: Routes = Arc::default();
        let relay_routes = routes.clone();
        let direct: Arc<Mutex<HashSet<u64>>> = Arc::default();
        let relay_direct = direct.clone();
        let reply_routes = self.reply_routes.clone();
        let addr = self.addr.clone();
        tokio::spawn(async move {
            let end = loop {
                match replies.message().await {
                    Ok(Some(reply)) => {
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
                    Ok(None) => break format!("next stage {addr} closed the data stream"),
                    Err(e) => break format!("data stream to next stage {addr}: {}", e.message()),
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
            routes,
            direct,
        })
    }

    /// Sends a frame on; its reply will go to `sink`, or on its reply route.
    pub async fn send(&self, frame: v1::BatchFrame, sink: ReplySink) -> Result<(), String> {
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
        Ok(())
    }

    /// Releases sequences on the next stage (which passes it on).
    pub async fn release(&self, req: v1::ReleaseRequest) -> Result<u32, String> {
        let mut client = self.client().await?;
        let reply = client
            .release(req)
            .await
            .map_err(|e| format!("release on next stage {}: {}", self.addr, e.message()))?;
        Ok(reply.into_inner().stages)
    }

    /// The prefix blocks the stages from the next one on hold on disk.
    pub async fn disk_prefixes(&self) -> Result<v1::DiskPrefixesReply, String> {
        let mut client = self.client().await?;
        let reply = client
            .disk_prefixes(v1::DiskPrefixesRequest {})
            .await
            .map_err(|e| format!("disk prefixes of next stage {}: {}", self.addr, e.message()))?;
        Ok(reply.into_inner())
    }
}
