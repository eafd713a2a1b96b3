//! The data plane's transports: what carries a hop's frames and replies.
//!
//! A [`Transport`] opens data streams (frames out, replies back) and reply
//! lines to one peer. Two implementations: the gRPC service's `Forward` /
//! `Replies` streams ([`WorkerClient`], over the control connection's
//! HTTP/2), and QUIC ([`quic::QuicPeer`]: one connection per hop, a QUIC
//! stream per data stream, the same TLS identities). Workers serve both
//! through [`DataPlane`]. The third, [`tcp`], is a TLS connection per hop
//! and reply line that the workers' compute threads read and write
//! themselves ([`tcp_peer::TcpPeer`] is the coordinator's end).

pub mod quic;
pub mod tcp;
pub mod tcp_peer;

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::Status;

use crate::v1;
use crate::WorkerClient;

/// Replies of a data stream or a reply line, as gRPC streams them.
pub type ReplyStream = Pin<Box<dyn Stream<Item = Result<v1::StageReply, Status>> + Send>>;
/// Frames going out on a data stream (a concrete type: tonic's client
/// future over a boxed stream is not provably `Send`).
pub type FrameStream = tokio_stream::wrappers::ReceiverStream<v1::BatchFrame>;
/// Frames coming in on a data stream (a peer's error ends it).
pub type InboundFrames = Pin<Box<dyn Stream<Item = Result<v1::BatchFrame, Status>> + Send>>;

/// The client side of one peer's data plane.
#[tonic::async_trait]
pub trait Transport: Send + Sync {
    /// Opens a data stream: `frames` go to the peer, its replies come back.
    async fn forward(&self, frames: FrameStream) -> Result<ReplyStream, Status>;
    /// Opens the reply line of `route` (replies straight from that stage).
    async fn replies(&self, route: u64) -> Result<ReplyStream, Status>;
    /// "grpc" or "quic", for logs.
    fn name(&self) -> &'static str;
}

/// The server side: what a worker does with a data stream or a line.
pub trait DataPlane: Send + Sync + 'static {
    fn forward(&self, frames: InboundFrames) -> ReplyStream;
    fn replies(&self, route: u64) -> Result<ReplyStream, Status>;
}

#[tonic::async_trait]
impl Transport for WorkerClient {
    async fn forward(&self, frames: FrameStream) -> Result<ReplyStream, Status> {
        let mut client = self.clone();
        let replies = v1::worker_client::WorkerClient::forward(&mut client, frames).await?;
        Ok(Box::pin(replies.into_inner()))
    }

    async fn replies(&self, route: u64) -> Result<ReplyStream, Status> {
        let mut client = self.clone();
        let request = v1::RepliesRequest { route };
        let line = v1::worker_client::WorkerClient::replies(&mut client, request).await?;
        Ok(Box::pin(line.into_inner()))
    }

    fn name(&self) -> &'static str {
        "grpc"
    }
}

/// Which transport a hop uses (`--transport`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TransportKind {
    #[default]
    Grpc,
    Quic,
    /// TCP links ([`tcp`]), read and written by the compute threads.
    Tcp,
}

impl TransportKind {
    pub fn to_proto(self) -> v1::DataTransport {
        match self {
            TransportKind::Grpc => v1::DataTransport::Grpc,
            TransportKind::Quic => v1::DataTransport::Quic,
            TransportKind::Tcp => v1::DataTransport::Tcp,
        }
    }

    /// Unknown values (a newer coordinator) mean gRPC, which every worker
    /// serves.
    pub fn from_proto(v: i32) -> Self {
        match v1::DataTransport::try_from(v) {
            Ok(v1::DataTransport::Quic) => TransportKind::Quic,
            Ok(v1::DataTransport::Tcp) => TransportKind::Tcp,
            _ => TransportKind::Grpc,
        }
    }
}

impl std::str::FromStr for TransportKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "grpc" => Ok(TransportKind::Grpc),
            "quic" => Ok(TransportKind::Quic),
            "tcp" => Ok(TransportKind::Tcp),
            _ => Err(format!("unknown transport {s:?} (grpc, quic or tcp)")),
        }
    }
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportKind::Grpc => "grpc",
            TransportKind::Quic => "quic",
            TransportKind::Tcp => "tcp",
        })
    }
}
