//! `MeasureLinks`: this worker's links to other workers, measured with the
//! same `Echo` round trips the coordinator makes to each worker
//! (`strata_proto::link_probe`), one peer after another so that no two
//! measurements share the link.
//!
//! Only a token holder gets here, but it names the addresses: so one
//! measurement runs at a time in this process, a peer's replies are capped
//! at a few KiB, and why a peer failed stays in this worker's log. The
//! caller learns "not measured", and whether a connection was made at all
//! (`PeerLink.unreachable`: the planner keeps this worker from streaming to
//! that peer), which the call's duration would tell it anyway.

use strata_proto::link_probe::{
    measure_link, MeasuredLink, CONNECT_TIMEOUT, MAX_PEERS, MAX_REPLY_BYTES,
};
use strata_proto::v1;
use tokio::sync::Mutex;
use tonic::Status;

use super::WorkerService;

/// One measurement at a time in this process: two would share the links
/// they measure, and each holds a connection per peer.
static MEASURING: Mutex<()> = Mutex::const_new(());

impl WorkerService {
    pub(super) async fn peer_links(
        &self,
        req: v1::MeasureLinksRequest,
    ) -> Result<v1::MeasureLinksReply, Status> {
        if req.peers.len() > MAX_PEERS {
            return Err(Status::invalid_argument(format!(
                "{} peers: at most {MAX_PEERS} are measured at a time",
                req.peers.len()
            )));
        }
        let _one_at_a_time = MEASURING.lock().await;
        let mut links = Vec::with_capacity(req.peers.len());
        for peer in req.peers {
            links.push(match self.measure_one(&peer).await {
                Ok(m) => v1::PeerLink {
                    peer,
                    latency_s: m.latency_s,
                    bandwidth_bytes_per_s: m.bandwidth_bytes_per_s,
                    ..Default::default()
                },
                Err(PeerError { why, unreachable }) => {
                    tracing::warn!("link to {peer} not measured: {why}");
                    v1::PeerLink {
                        peer,
                        error: "not measured (the worker's log says why)".into(),
                        unreachable,
                        ..Default::default()
                    }
                }
            });
        }
        Ok(v1::MeasureLinksReply { links })
    }

    async fn measure_one(&self, spec: &str) -> Result<MeasuredLink, PeerError> {
        let failed = |why: String| PeerError {
            why,
            unreachable: false,
        };
        // The same rules as a next stage: pinned when this worker uses TLS.
        let (addr, trust) = self
            .next_stage(spec)
            .map_err(|e| failed(e.message().to_string()))?
            .ok_or_else(|| failed("an empty peer address".into()))?;
        let pin = trust.pin(&addr).map_err(|e| failed(e.to_string()))?;
        // A peer this worker cannot connect to is one it cannot stream to.
        let unreachable = |why: String| PeerError {
            why,
            unreachable: true,
        };
        let connect = strata_proto::connect(&addr, &self.shared.config.token, pin);
        let client = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| {
                unreachable(format!(
                    "no connection to {addr} within {} s",
                    CONNECT_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| unreachable(e.to_string()))?
            .max_decoding_message_size(MAX_REPLY_BYTES);
        measure_link(&client).await.map_err(failed)
    }
}

/// Why a peer's link was not measured, and whether no connection was made.
struct PeerError {
    why: String,
    unreachable: bool,
}
