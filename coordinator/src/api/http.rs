//! The HTTP/1.1 accept loop: axum's router behind hyper with deadlines on
//! what a client sends, so a client on the LAN that opens connections and
//! trickles (or never finishes) its headers cannot hold them forever.
//! `axum::serve` gives no way to set hyper's header timeout, hence this.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// How long a client may take to send a request. Only the request side is
/// bounded: a response (a completion streaming for minutes) is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// From a connection's first byte to the end of a request's headers.
    pub header_read: Duration,
    /// From the handler starting to read a body to its last byte.
    pub body_read: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_read: Duration::from_secs(10),
            body_read: Duration::from_secs(30),
        }
    }
}

impl HttpLimits {
    /// One knob for both: the body gets `total`, headers the smaller of
    /// `total` and the 10 s default (headers are small).
    pub fn within(total: Duration) -> Self {
        let total = total.max(Duration::from_millis(100));
        HttpLimits {
            header_read: total.min(HttpLimits::default().header_read),
            body_read: total,
        }
    }
}

/// How long shutdown waits for open responses before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` until `shutdown` completes. HTTP/1.1 only:
/// the OpenAI clients speak it, and h2c would be one more parser to expose.
pub async fn serve_http(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read);
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Out of descriptors, say: back off rather than spin.
                    tracing::warn!("accepting an HTTP connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        // Not `serve_connection_with_upgrades`: it sniffs the protocol
        // first with no deadline (an idle socket or a bare HTTP/2 preface
        // held it forever) and ignores `http1_only`.
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("HTTP connection ended: {e}");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!("shutting down with responses still open");
    }
    Ok(())
}
