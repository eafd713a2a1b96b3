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
pub mod tls;

pub use auth::{BearerToken, TokenCheck};
pub use link::{connect, parse_peer, Trust, WorkerClient, MAX_MESSAGE_BYTES};
pub use tls::{Fingerprint, NodeIdentity};

/// Activations cross stage boundaries as f16 by default
/// (`shared/DESIGN.md`, data flow); `ActDtype::F32` is the lossless option.
pub const ACTIVATION_BYTES_PER_VALUE: usize = 2;
