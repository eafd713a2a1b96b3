//! The data plane over QUIC (quinn): one connection per hop, one QUIC
//! stream per data stream or reply line, each message a 4-byte
//! little-endian length and its prost bytes.
//!
//! TLS is the gRPC links' (the worker's pinned certificate, the cluster
//! client certificate derived from the token, so a caller without the
//! token is refused in the handshake) under an ALPN of its own. The
//! transport is set for a LAN rather than the internet: a 0.5 ms first RTT
//! guess (not 333 ms), the HTTP/2 links' windows, a 4 MiB first congestion
//! window so that a prompt's hidden states are not slow-started, and a
//! 2 s handshake limit (a hop that cannot do QUIC falls back to gRPC
//! soon).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{RecvStream, SendStream, VarInt};
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use super::{DataPlane, FrameStream, ReplyStream, Transport};
use crate::link::{ConnectError, CONNECTION_WINDOW_BYTES, MAX_MESSAGE_BYTES, STREAM_WINDOW_BYTES};
use crate::tls::{self, Fingerprint, NodeIdentity};
use crate::v1;

const ALPN: &[u8] = b"strata-data/1";
/// The first byte of a stream says what it is.
const KIND_FORWARD: u8 = 1;
const KIND_REPLIES: u8 = 2;
/// Reset codes a worker sends on a stream it will not serve.
const REFUSED: u32 = 1;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut congestion = quinn::congestion::CubicConfig::default();
    congestion.initial_window(4 << 20);
    let mut t = quinn::TransportConfig::default();
    t.initial_rtt(Duration::from_micros(500))
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW_BYTES))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW_BYTES))
        .send_window(CONNECTION_WINDOW_BYTES as u64)
        .max_concurrent_bidi_streams(VarInt::from_u32(1024))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .keep_alive_interval(Some(Duration::from_secs(2)))
        .max_idle_timeout(Some(VarInt::from_u32(10_000).into()))
        .congestion_controller_factory(Arc::new(congestion));
    Arc::new(t)
}

/// A worker's QUIC endpoint on UDP `addr` (its gRPC port).
pub fn bind(
    addr: SocketAddr,
    identity: &NodeIdentity,
    token: &str,
) -> Result<quinn::Endpoint, String> {
    let mut tls = (*tls::server_config(identity, token).map_err(|e| e.to_string())?).clone();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(Arc::new(tls)).map_err(|e| e.to_string())?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport_config());
    quinn::Endpoint::server(config, addr).map_err(|e| format!("UDP {addr}: {e}"))
}

/// Serves `endpoint` until it is closed: every stream of every connection
/// goes to `plane`.
pub async fn serve(endpoint: quinn::Endpoint, plane: Arc<dyn DataPlane>) {
    while let Some(incoming) = endpoint.accept().await {
        let plane = plane.clone();
        tokio::spawn(async move {
            let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::warn!("refused a QUIC connection: {e}");
                    return;
                }
                Err(_) => {
                    tracing::warn!("a QUIC handshake took over {HANDSHAKE_TIMEOUT:?}");
                    return;
                }
            };
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(serve_stream(send, recv, plane.clone()));
            }
        });
    }
}

async fn serve_stream(mut send: SendStream, mut recv: RecvStream, plane: Arc<dyn DataPlane>) {
    let mut kind = [0u8; 1];
    if recv.read_exact(&mut kind).await.is_err() {
        return;
    }
    let replies = match kind[0] {
        KIND_FORWARD => plane.forward(Box::pin(read_messages::<v1::BatchFrame>(recv))),
        KIND_REPLIES => {
            let mut route = [0u8; 8];
            if recv.read_exact(&mut route).await.is_err() {
                return;
            }
            match plane.replies(u64::from_le_bytes(route)) {
                Ok(line) => line,
                Err(e) => {
                    tracing::warn!("refused a QUIC reply line: {}", e.message());
                    let _ = send.reset(VarInt::from_u32(REFUSED));
                    return;
                }
            }
        }
        other => {
            tracing::warn!("a QUIC stream of unknown kind {other}");
            let _ = send.reset(VarInt::from_u32(REFUSED));
            return;
        }
    };
    // Not held while the stream lasts: a reply line outlives nothing.
    drop(plane);
    write_messages(send, replies).await;
}

/// Writes each message of `messages` on `send`; an error resets the
/// stream, the end finishes it. It also ends when the peer stops reading
/// or the connection is lost, so that a reply line nobody reads (its
/// coordinator went away), or a data stream whose hop broke, lets go of
/// what feeds it.
async fn write_messages<M: Message>(
    mut send: SendStream,
    messages: impl Stream<Item = Result<M, Status>>,
) {
    let mut messages = std::pin::pin!(messages);
    let stopped = send.stopped();
    let mut stopped = std::pin::pin!(stopped);
    loop {
        let m = tokio::select! {
            m = messages.next() => m,
            _ = &mut stopped => return,
        };
        let Some(m) = m else { break };
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!("QUIC stream ends with an error: {}", e.message());
                let _ = send.reset(VarInt::from_u32(REFUSED));
                return;
            }
        };
        let len = m.encoded_len();
        if len > MAX_MESSAGE_BYTES {
            tracing::warn!("a {len}-byte message is over the {MAX_MESSAGE_BYTES}-byte limit");
            let _ = send.reset(VarInt::from_u32(REFUSED));
            return;
        }
        let mut buf = Vec::with_capacity(4 + len);
        buf.extend_from_slice(&(len as u32).to_le_bytes());
        m.encode(&mut buf).expect("the buffer has room");
        if send.write_all(&buf).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

/// The messages on `recv`, read as the stream is polled (no task of its
/// own: one wake-up less per message); a bad length or a broken stream
/// ends them with an error.
fn read_messages<M: Message + Default + 'static>(
    recv: RecvStream,
) -> impl Stream<Item = Result<M, Status>> + Send + 'static {
    futures_util::stream::unfold(Some(recv), |recv| async move {
        let mut recv = recv?;
        let m = read_message::<M>(&mut recv).await?;
        // An error ends the stream after it is given.
        let next = m.is_ok().then_some(recv);
        Some((m, next))
    })
}

/// The next message: `None` at a clean end between messages.
async fn read_message<M: Message + Default>(recv: &mut RecvStream) -> Option<Result<M, Status>> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return None,
        Err(e) => return Some(Err(quic_error(&e))),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_MESSAGE_BYTES {
        let _ = recv.stop(VarInt::from_u32(REFUSED));
        let msg = format!("a {len}-byte message is over the {MAX_MESSAGE_BYTES}-byte limit");
        return Some(Err(Status::resource_exhausted(msg)));
    }
    // Grown as the bytes arrive, not sized by what the peer announced.
    let mut buf = Vec::with_capacity(len.min(1 << 20));
    let mut body = tokio::io::AsyncReadExt::take(&mut *recv, len as u64);
    match tokio::io::AsyncReadExt::read_to_end(&mut body, &mut buf).await {
        Ok(n) if n == len => {}
        Ok(n) => {
            let msg = format!("QUIC: the stream ended {n} bytes into a {len}-byte message");
            return Some(Err(Status::unavailable(msg)));
        }
        Err(e) => return Some(Err(quic_error(&e))),
    }
    Some(
        M::decode(buf.as_slice())
            .map_err(|e| Status::invalid_argument(format!("a malformed message: {e}"))),
    )
}

/// A broken stream as a status, with its cause (quinn's "connection lost"
/// says why only in its source).
fn quic_error(e: &(dyn std::error::Error + 'static)) -> Status {
    Status::unavailable(format!("QUIC: {}", crate::link::error_chain(e)))
}

/// A QUIC connection to one worker's data plane.
pub struct QuicPeer {
    conn: quinn::Connection,
    /// Keeps the client socket (and its driver) alive with the connection.
    _endpoint: quinn::Endpoint,
}

impl QuicPeer {
    /// Connects to the worker at `addr` (its gRPC address: QUIC is on the
    /// same port, over UDP), which must present the certificate `pin`.
    pub async fn connect(
        addr: &str,
        token: &str,
        pin: Fingerprint,
    ) -> Result<QuicPeer, ConnectError> {
        let err = |what: String| ConnectError {
            addr: addr.to_string(),
            what: format!("QUIC: {what}"),
        };
        let target = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| err(e.to_string()))?
            .next()
            .ok_or_else(|| err("no address".into()))?;
        let bind: SocketAddr = if target.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = quinn::Endpoint::client(bind).map_err(|e| err(e.to_string()))?;
        let mut tls = (*tls::client_config(token, pin).map_err(|e| err(e.to_string()))?).clone();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = QuicClientConfig::try_from(Arc::new(tls)).map_err(|e| err(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(transport_config());
        let connecting = endpoint
            .connect_with(config, target, tls::CERT_NAME)
            .map_err(|e| err(e.to_string()))?;
        let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
            .await
            .map_err(|_| err(format!("no handshake within {HANDSHAKE_TIMEOUT:?}")))?
            .map_err(|e| err(crate::link::error_chain(&e)))?;
        Ok(QuicPeer {
            conn,
            _endpoint: endpoint,
        })
    }

    /// Whether the connection still stands (a worker that restarted
    /// closed it).
    pub fn is_open(&self) -> bool {
        self.conn.close_reason().is_none()
    }

    async fn open(&self, head: &[u8]) -> Result<(SendStream, RecvStream), Status> {
        let (mut send, recv) = self.conn.open_bi().await.map_err(|e| quic_error(&e))?;
        send.write_all(head).await.map_err(|e| quic_error(&e))?;
        Ok((send, recv))
    }
}

impl Drop for QuicPeer {
    fn drop(&mut self) {
        self.conn.close(VarInt::from_u32(0), b"done");
    }
}

#[tonic::async_trait]
impl Transport for QuicPeer {
    async fn forward(&self, frames: FrameStream) -> Result<ReplyStream, Status> {
        let (send, recv) = self.open(&[KIND_FORWARD]).await?;
        tokio::spawn(write_messages(send, frames.map(Ok::<_, Status>)));
        Ok(Box::pin(read_messages::<v1::StageReply>(recv)))
    }

    async fn replies(&self, route: u64) -> Result<ReplyStream, Status> {
        let mut head = vec![KIND_REPLIES];
        head.extend_from_slice(&route.to_le_bytes());
        // Dropping the send side finishes it: the worker reads nothing past
        // the route. Dropping the replies stops the worker's writer.
        let (_send, recv) = self.open(&head).await?;
        Ok(Box::pin(read_messages::<v1::StageReply>(recv)))
    }

    fn name(&self) -> &'static str {
        "quic"
    }
}
