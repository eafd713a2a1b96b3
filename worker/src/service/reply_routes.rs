//! The coordinator's direct lines into this stage (`Replies` streams), by
//! route. A frame that names a route gets its reply on that line, not back
//! up the chain of stages: each token then crosses the network once per
//! stage plus once back, instead of twice per stage.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Mutex;

use strata_proto::v1;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

pub type ReplyLine = Pin<Box<dyn Stream<Item = Result<v1::StageReply, Status>> + Send>>;

#[derive(Default)]
pub struct ReplyRoutes {
    lines: Mutex<HashMap<u64, mpsc::Sender<v1::StageReply>>>,
    /// Routes whose line is a TCP link, held by the compute thread
    /// (`stage_links.rs`): their replies go through it.
    tcp: Mutex<std::collections::HashSet<u64>>,
}

impl ReplyRoutes {
    /// Opens the line of `route`, replacing an older one of the same route.
    /// Lines whose coordinator went away are dropped here, so they cannot
    /// pile up.
    pub fn open(&self, route: u64) -> ReplyLine {
        let (tx, rx) = mpsc::channel(64);
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.retain(|_, line| !line.is_closed());
        lines.insert(route, tx);
        Box::pin(ReceiverStream::new(rx).map(Ok))
    }

    pub fn set_tcp_line(&self, route: u64, open: bool) {
        let mut tcp = self.tcp.lock().unwrap_or_else(|p| p.into_inner());
        if open {
            tcp.insert(route);
        } else {
            tcp.remove(&route);
        }
    }

    pub fn has_tcp_line(&self, route: u64) -> bool {
        self.tcp
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&route)
    }

    /// Sends `reply` on the line of `route`; gives it back when there is no
    /// such line (route 0, an older coordinator, or one that went away).
    pub async fn send(&self, route: u64, reply: v1::StageReply) -> Result<(), v1::StageReply> {
        if route == 0 {
            return Err(reply);
        }
        let line = self
            .lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&route)
            .cloned();
        match line {
            Some(line) => line.send(reply).await.map_err(|e| e.0),
            None => Err(reply),
        }
    }
}
