//! Worker RPC and data-plane messages (`proto/worker.proto`), compiled with
//! protox + tonic-prost-build, plus what both ends of a link share: the
//! cluster-token check, pinned TLS, transport limits and a connect helper.

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("strata.worker.v1");
}

pub mod accept;
pub mod auth;
pub mod link;
pub mod link_probe;
pub mod row_bits;
pub mod tls;
pub mod transport;

pub use auth::{BearerToken, TokenCheck};
pub use link::{connect, parse_peer, Trust, WorkerClient, MAX_MESSAGE_BYTES};
pub use tls::{Fingerprint, NodeIdentity};

/// Bytes per value of hidden states sent as `ActDtype::F16` (half of
/// `ActDtype::F32`, which is lossless and `strata serve`'s default).
pub const ACTIVATION_BYTES_PER_VALUE: usize = 2;
