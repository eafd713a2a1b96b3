//! Transport settings both ends use, and a client connect helper.

use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::auth::BearerToken;

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

/// Connects to a worker at `host:port` (or a full `http://` URI) with the
/// cluster token, raised message limits and large HTTP/2 windows.
pub async fn connect(addr: &str, token: &str) -> Result<WorkerClient, ConnectError> {
    let err = |what: String| ConnectError {
        addr: addr.to_string(),
        what,
    };
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|e| err(e.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .http2_adaptive_window(true)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| err(format!("{e} ({e:?})")))?;
    let token = BearerToken::new(token).map_err(|e| err(e.message().to_string()))?;
    Ok(
        crate::v1::worker_client::WorkerClient::with_interceptor(channel, token)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    )
}
