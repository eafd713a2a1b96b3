//! A coordinator's end of TCP data links ([`super::tcp`]): the data stream
//! to stage 0 and the reply lines, each its own TLS connection on the
//! worker's gRPC port. Async (the coordinator runs on tokio); on the worker
//! the compute thread reads and writes these connections itself.
//!
//! A worker that refuses the link (an older version) gets the call over
//! gRPC instead, with a warning.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_stream::StreamExt;
use tonic::Status;

use super::tcp::{encode, Framer, ALPN, CONNECT_TIMEOUT, READY};
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
                if write.write_all(&encode(&msg)).await.is_err() {
                    return;
                }
            }
            let _ = write.shutdown().await;
        });
        Ok(replies_from(read, None, self.addr.clone()))
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
        conn.write_all(&encode(&hello))
            .await
            .map_err(|e| Status::unavailable(format!("TCP reply line to {}: {e}", self.addr)))?;
        tracing::info!("reply line of {} over a TCP link", self.addr);
        let (read, write) = tokio::io::split(conn);
        // The write half lives as long as the line: closing it would end
        // the line on the worker.
        Ok(replies_from(read, Some(write), self.addr.clone()))
    }

    fn name(&self) -> &'static str {
        "tcp"
    }
}

/// The replies a link brings, until it ends (an error says why).
fn replies_from(read: ReadHalf<Conn>, keep: Option<WriteHalf<Conn>>, addr: String) -> ReplyStream {
    struct State {
        read: ReadHalf<Conn>,
        _keep: Option<WriteHalf<Conn>>,
        framer: Framer,
        ready: std::collections::VecDeque<v1::LinkMessage>,
        addr: String,
        done: bool,
    }
    let state = State {
        read,
        _keep: keep,
        framer: Framer::default(),
        ready: Default::default(),
        addr,
        done: false,
    };
    let broken =
        |addr: &str, e: String| Status::unavailable(format!("TCP data link to {addr}: {e}"));
    Box::pin(futures_util::stream::unfold(
        state,
        move |mut s| async move {
            loop {
                if let Some(msg) = s.ready.pop_front() {
                    match msg.kind {
                        Some(v1::link_message::Kind::Reply(r)) => return Some((Ok(r), s)),
                        _ => {
                            s.done = true;
                            let e = broken(&s.addr, "a message that is not a reply".into());
                            return Some((Err(e), s));
                        }
                    }
                }
                if s.done {
                    return None;
                }
                let mut chunk = vec![0u8; 64 << 10];
                let n = match s.read.read(&mut chunk).await {
                    Ok(0) => return None,
                    Ok(n) => n,
                    Err(e) => {
                        s.done = true;
                        return Some((Err(broken(&s.addr, e.to_string())), s));
                    }
                };
                s.framer.push(&chunk[..n]);
                let mut out = Vec::new();
                if let Err(e) = s.framer.split(&mut out) {
                    s.done = true;
                    return Some((Err(broken(&s.addr, e)), s));
                }
                s.ready.extend(out);
            }
        },
    ))
}
