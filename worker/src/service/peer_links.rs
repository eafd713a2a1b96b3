//! `MeasureLinks`: this worker's links to other workers, measured with the
//! same `Echo` round trips the coordinator makes to each worker
//! (`strata_proto::link_probe`), one peer after another so that no two
//! measurements share the link.

use strata_proto::link_probe::{measure_link, MEASURE_TIMEOUT};
use strata_proto::v1;
use tonic::Status;

use super::WorkerService;

/// Peers one request may name: a pool's workers, with room to spare.
pub const MAX_PEERS: usize = 64;

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
        let mut links = Vec::with_capacity(req.peers.len());
        for peer in req.peers {
            let measured = self.measure_one(&peer).await;
            links.push(match measured {
                Ok(m) => v1::PeerLink {
                    peer,
                    latency_s: m.latency_s,
                    bandwidth_bytes_per_s: m.bandwidth_bytes_per_s,
                    error: String::new(),
                },
                Err(error) => v1::PeerLink {
                    peer,
                    error,
                    ..Default::default()
                },
            });
        }
        Ok(v1::MeasureLinksReply { links })
    }

    async fn measure_one(
        &self,
        spec: &str,
    ) -> Result<strata_proto::link_probe::MeasuredLink, String> {
        // The same rules as a next stage: pinned when this worker uses TLS.
        let (addr, trust) = self
            .next_stage(spec)
            .map_err(|e| e.message().to_string())?
            .ok_or("an empty peer address")?;
        let pin = trust.pin(&addr).map_err(|e| e.to_string())?;
        let token = &self.shared.config.token;
        let connect = strata_proto::connect(&addr, token, pin);
        let client = tokio::time::timeout(MEASURE_TIMEOUT, connect)
            .await
            .map_err(|_| {
                format!(
                    "no connection to {addr} within {} s",
                    MEASURE_TIMEOUT.as_secs()
                )
            })?
            .map_err(|e| e.to_string())?;
        measure_link(&client).await
    }
}
