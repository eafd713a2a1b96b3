//! A coordinator's end of TCP data links ([`super::tcp`]): the data stream
//! to stage 0 and the reply lines, each its own TLS connection on the
//! worker's gRPC port. Async (the coordinator runs on tokio); on the worker
//! the compute thread reads and writes these connections itself.
//!
//! A worker that refuses the link (an older version) gets the call over
//! gRPC instead, with a warning.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_stream::StreamExt;
use tonic::Status;

use super::tcp::{encode, set_keepalive, Framer, ALPN, CONNECT_TIMEOUT, READY};
use super::{FrameStream, ReplyStream, Transport};
use crate::tls::{self, Fingerprint};
use crate::{v1, WorkerClient};

type Conn = TlsStream<TcpStream>;

/// The TCP data plane of one worker, with its gRPC client to fall back on.
pub struct TcpPeer {
    addr: String,
    token: String,
    pin: Fingerprint,
    grpc: WorkerClient,
}

impl TcpPeer {
    pub fn new(addr: &str, token: &str, pin: Fingerprint, grpc: WorkerClient) -> Self {
        TcpPeer {
            addr: addr.to_string(),
            token: token.to_string(),
            pin,
            grpc,
        }
    }

    /// A link connection the worker accepted.
    async fn open(&self) -> Result<Conn, String> {
        let connect = async {
            let tcp = TcpStream::connect(&self.addr)
                .await
                .map_err(|e| e.to_string())?;
            tcp.set_nodelay(true).map_err(|e| e.to_string())?;
            // An idle reply line whose worker's host vanished ends.
            set_keepalive(std::os::fd::AsRawFd::as_raw_fd(&tcp)).map_err(|e| e.to_string())?;
            let mut config = (*tls::client_config(&self.token, self.pin).map_err(|e| e.0)?).clone();
            config.alpn_protocols = vec![ALPN.to_vec()];
            let mut conn = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(tls::server_name(), tcp)
                .await
                .map_err(|e| crate::link::error_chain(&e))?;
            if conn.get_ref().1.alpn_protocol() != Some(ALPN) {
                return Err("the worker does not serve TCP data links (an older version)".into());
            }
            let mut ready = [0u8; 1];
            match conn.read_exact(&mut ready).await {
                Ok(_) if ready[0] == READY => Ok(conn),
                Ok(_) => Err("the worker answered the link with junk".into()),
                Err(e) => Err(format!("refused: {e}")),
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(r) => r,
            Err(_) => Err(format!("no link within {CONNECT_TIMEOUT:?}")),
        }
        .map_err(|e| format!("TCP data link to {}: {e}", self.addr))
    }
}

#[tonic::async_trait]
impl Transport for TcpPeer {
    async fn forward(&self, mut frames: FrameStream) -> Result<ReplyStream, Status> {
        let conn = match self.open().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("{e}; the data stream goes over gRPC");
                return Transport::forward(&self.grpc, frames).await;
            }
        };
        tracing::info!("data stream to {} over a TCP link", self.addr);
        let (read, mut write) = tokio::io::split(conn);
        // The link ends when the frames do (the worker then frees the
        // sequences it carried), or when the worker goes.
        tokio::spawn(async move {
            while let Some(frame) = frames.next().await {
                let msg = v1::LinkMessage {
                    kind: Some(v1::link_message::Kind::Frame(frame)),
                };
                let Ok(bytes) = encode(&msg) else {
                    tracing::warn!("a frame over the message limit: the data stream ends");
                    return;
                };
                // rustls may keep what the socket did not take: flush, or
                // it waits for the next frame.
                if write.write_all(&bytes).await.is_err() || write.flush().await.is_err() {
                    return;
                }
            }
            let _ = write.shutdown().await;
        });
        Ok(replies_from(
            read,
            Framer::default(),
            VecDeque::new(),
            None,
            self.addr.clone(),
        ))
    }

    async fn replies(&self, route: u64) -> Result<ReplyStream, Status> {
        let mut conn = match self.open().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("{e}; the reply line goes over gRPC");
                return Transport::replies(&self.grpc, route).await;
            }
        };
        let hello = v1::LinkMessage {
            kind: Some(v1::link_message::Kind::ReplyLine(route)),
        };
        let failed =
            |e: String| Status::unavailable(format!("TCP reply line to {}: {e}", self.addr));
        let bytes = encode(&hello).map_err(|e| failed(e.to_string()))?;
        conn.write_all(&bytes)
            .await
            .map_err(|e| failed(e.to_string()))?;
        conn.flush().await.map_err(|e| failed(e.to_string()))?;
        let (mut read, write) = tokio::io::split(conn);
        // The worker says the line is in place before any frame of the
        // route may need it (as a gRPC `Replies` answers once it is).
        let mut framer = Framer::default();
        let mut ready = VecDeque::new();
        let ack = tokio::time::timeout(
            CONNECT_TIMEOUT,
            next_message(&mut read, &mut framer, &mut ready),
        )
        .await
        .map_err(|_| failed(format!("no answer within {CONNECT_TIMEOUT:?}")))?
        .map_err(failed)?;
        match ack.and_then(|m| m.kind) {
            Some(v1::link_message::Kind::ReplyLine(r)) if r == route => {}
            _ => return Err(failed("the worker did not take the line".into())),
        }
        tracing::info!("reply line of {} over a TCP link", self.addr);
        // The write half lives as long as the line: closing it would end
        // the line on the worker.
        Ok(replies_from(
            read,
            framer,
            ready,
            Some(write),
            self.addr.clone(),
        ))
    }

    fn name(&self) -> &'static str {
        "tcp"
    }
}

/// The next message of a link: `None` at its end.
async fn next_message(
    read: &mut ReadHalf<Conn>,
    framer: &mut Framer,
    ready: &mut VecDeque<v1::LinkMessage>,
) -> Result<Option<v1::LinkMessage>, String> {
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        if let Some(m) = ready.pop_front() {
            return Ok(Some(m));
        }
        let n = read.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(None);
        }
        framer.push(&chunk[..n]);
        let mut out = Vec::new();
        framer.split(&mut out)?;
        ready.extend(out);
    }
}

/// The replies a link brings, until it ends (an error says why).
fn replies_from(
    read: ReadHalf<Conn>,
    framer: Framer,
    ready: VecDeque<v1::LinkMessage>,
    keep: Option<WriteHalf<Conn>>,
    addr: String,
) -> ReplyStream {
    struct State {
        read: ReadHalf<Conn>,
        _keep: Option<WriteHalf<Conn>>,
        framer: Framer,
        ready: VecDeque<v1::LinkMessage>,
        addr: String,
        done: bool,
    }
    let state = State {
        read,
        _keep: keep,
        framer,
        ready,
        addr,
        done: false,
    };
    Box::pin(futures_util::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        let broken = |e: String| Status::unavailable(format!("TCP data link to {}: {e}", s.addr));
        let got = next_message(&mut s.read, &mut s.framer, &mut s.ready).await;
        let item = match got {
            Ok(None) => return None,
            Ok(Some(v1::LinkMessage {
                kind: Some(v1::link_message::Kind::Reply(r)),
            })) => Ok(r),
            Ok(Some(_)) => Err(broken("a message that is not a reply".into())),
            Err(e) => Err(broken(e)),
        };
        s.done = item.is_err();
        Some((item, s))
    }))
}
