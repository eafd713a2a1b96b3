//! A worker's listening side under TLS: each connection's handshake runs in
//! its own task with a deadline, so a client that stalls mid-handshake holds
//! up nobody, and one refused at the handshake never reaches an RPC.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS connection tonic can serve.
pub struct TlsConn(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for TlsConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// What a worker does with a connection that asked for a TCP data link
/// (`transport::tcp::ALPN`).
pub type OnLink = Arc<dyn Fn(tokio_rustls::server::TlsStream<TcpStream>) + Send + Sync>;

/// Connections on `listener` that completed the handshake, for gRPC; those
/// that asked for a TCP data link go to `on_link` instead (refused when
/// there is none). Accepting stops when the stream is dropped.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    on_link: Option<OnLink>,
) -> ReceiverStream<io::Result<TlsConn>> {
    let (tx, rx) = mpsc::channel(16);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: back off, do not spin.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let on_link = on_link.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(mut tls)) if tls.get_ref().1.alpn_protocol() == Some(crate::transport::tcp::ALPN) => {
                        let Some(on_link) = on_link else {
                            tracing::warn!("refused a TCP data link from {peer}: not served here");
                            return;
                        };
                        // The handshake (the client's certificate) passed.
                        use tokio::io::AsyncWriteExt;
                        let ready = [crate::transport::tcp::READY];
                        match tls.write_all(&ready).await.and(tls.flush().await) {
                            Ok(()) => on_link(tls),
                            Err(e) => tracing::warn!("a TCP data link from {peer}: {e}"),
                        }
                    }
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(TlsConn(tls))).await;
                    }
                    Ok(Err(e)) => tracing::warn!(
                        "refused a connection from {peer}: {}",
                        crate::link::error_chain(&e)
                    ),
                    Err(_) => tracing::warn!("refused a connection from {peer}: no TLS handshake within {HANDSHAKE_TIMEOUT:?}"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
