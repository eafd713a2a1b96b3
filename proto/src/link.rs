//! Transport settings both ends use, and a client connect helper.

use std::collections::HashMap;
use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::auth::BearerToken;
use crate::tls::{self, Fingerprint};

/// Largest message either end accepts: a prompt chunk of hidden states for a
/// 8192-wide model at 4096 tokens in f32 is 128 MiB.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;
/// HTTP/2 windows: large enough that a frame of activations is not throttled
/// by flow control on a LAN link (adaptive window sizing grows from here).
pub const STREAM_WINDOW_BYTES: u32 = 16 << 20;
pub const CONNECTION_WINDOW_BYTES: u32 = 64 << 20;

pub type WorkerClient =
    crate::v1::worker_client::WorkerClient<InterceptedService<Channel, BearerToken>>;

#[derive(Debug)]
pub struct ConnectError {
    pub addr: String,
    pub what: String,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "connecting to worker {}: {}", self.addr, self.what)
    }
}

impl std::error::Error for ConnectError {}

/// Splits `host:port#sha256:<hex>` (as a worker logs it) into the address
/// and its pinned fingerprint; a bare `host:port` has none.
pub fn parse_peer(spec: &str) -> Result<(String, Option<Fingerprint>), String> {
    match spec.split_once('#') {
        None => Ok((spec.to_string(), None)),
        Some((addr, pin)) => Ok((addr.to_string(), Some(pin.parse()?))),
    }
}

/// How a node reaches workers: TLS pinned per address, or plaintext
/// (`--insecure`).
#[derive(Clone, Debug)]
pub enum Trust {
    Pinned(HashMap<String, Fingerprint>),
    Insecure,
}

impl Trust {
    /// Pins `addr` to `pin` too: another port of a worker process reached
    /// over a link already pinned to that certificate (a box's other
    /// stages). Nothing to do for plaintext links.
    pub fn pin_also(&mut self, addr: &str, pin: Fingerprint) {
        if let Trust::Pinned(pins) = self {
            pins.entry(addr.to_string()).or_insert(pin);
        }
    }

    /// The pin for `addr`: `None` only for plaintext links.
    pub fn pin(&self, addr: &str) -> Result<Option<Fingerprint>, ConnectError> {
        match self {
            Trust::Insecure => Ok(None),
            Trust::Pinned(pins) => pins.get(addr).copied().map(Some).ok_or_else(|| ConnectError {
                addr: addr.to_string(),
                what: "no fingerprint is pinned for it (give it as HOST:PORT#sha256:<hex>, as the worker logs it)".into(),
            }),
        }
    }
}

/// Connects to a worker at `host:port` with the cluster token, raised
/// message limits and large HTTP/2 windows: over TLS 1.3 when `pin` is
/// given (the worker must present that certificate), else in plaintext.
pub async fn connect(
    addr: &str,
    token: &str,
    pin: Option<Fingerprint>,
) -> Result<WorkerClient, ConnectError> {
    let err = |what: String| ConnectError {
        addr: addr.to_string(),
        what,
    };
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| err(e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_adaptive_window(true)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let channel = match pin {
        None => endpoint.connect().await,
        Some(pin) => {
            let tls = tokio_rustls::TlsConnector::from(
                tls::client_config(token, pin).map_err(|e| err(e.to_string()))?,
            );
            let target = addr.to_string();
            endpoint
                .connect_with_connector(tower::service_fn(move |_| {
                    let (tls, target) = (tls.clone(), target.clone());
                    async move {
                        let tcp = tokio::time::timeout(
                            CONNECT_TIMEOUT,
                            tokio::net::TcpStream::connect(&target),
                        )
                        .await
                        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
                        tcp.set_nodelay(true)?;
                        let stream = tokio::time::timeout(
                            CONNECT_TIMEOUT,
                            tls.connect(tls::server_name(), tcp),
                        )
                        .await
                        .map_err(|_| std::io::Error::other("no TLS handshake from the worker"))??;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                    }
                }))
                .await
        }
    };
    let channel = channel.map_err(|e| err(error_chain(&e)))?;
    let token = BearerToken::new(token).map_err(|e| err(e.message().to_string()))?;
    Ok(
        crate::v1::worker_client::WorkerClient::with_interceptor(channel, token)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    )
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// "outer: inner: innermost", without repeats (tonic's errors nest), with
/// TLS refusals in words.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    // (how it displays, what to say for it), outermost first.
    let mut levels: Vec<(String, String)> = Vec::new();
    let mut next = Some(e);
    while let Some(s) = next {
        // io::Error hides the error it wraps from `source()`.
        let inner = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map_or(s, |e| e as &(dyn std::error::Error + 'static));
        let text = match inner.downcast_ref::<rustls::Error>() {
            Some(tls) => tls_words(tls),
            None => s.to_string(),
        };
        levels.push((s.to_string(), text));
        next = s.source();
    }
    let mut parts: Vec<String> = Vec::new();
    for (i, (shown, text)) in levels.iter().enumerate() {
        // An outer error that repeats the one inside it adds only its prefix.
        let own = match levels.get(i + 1) {
            Some((inner, _)) if shown.contains(inner.as_str()) => shown
                .replace(inner.as_str(), "")
                .trim_end_matches([':', ' '])
                .to_string(),
            _ => text.clone(),
        };
        if !own.is_empty() && !parts.contains(&own) {
            parts.push(own);
        }
    }
    parts.join(": ")
}

fn tls_words(e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError, Error};
    match e {
        Error::InvalidCertificate(CertificateError::Other(o)) => o.0.to_string(),
        Error::AlertReceived(
            A::BadCertificate | A::CertificateUnknown | A::CertificateRequired,
        ) => "the peer refused our certificate".into(),
        other => format!("TLS: {other}"),
    }
}

/// A failed RPC's message with its causes (a refused TLS link shows up as
/// a bare "transport error" otherwise).
pub fn status_text(s: &tonic::Status) -> String {
    match std::error::Error::source(s) {
        Some(src) => format!("{}: {}", s.message(), error_chain(src)),
        None => s.message().to_string(),
    }
}
