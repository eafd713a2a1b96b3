//! Worker RPC and data-plane messages. The gRPC service arrives with the
//! multi-worker issue; until then this crate only names the wire constants.

/// Activations cross stage boundaries as f16 (`shared/DESIGN.md`, data flow).
pub const ACTIVATION_BYTES_PER_VALUE: usize = 2;
