//! The links the planner charges hops by: the coordinator's own to each
//! worker (`Echo` round trips, `strata_proto::link_probe`), and each
//! worker's to the others on other hosts (`MeasureLinks`, the same round
//! trips made by the worker), so that a pool whose workers sit on one
//! switch while the coordinator is far away is planned by the links its
//! hidden states really cross.

use std::collections::BTreeMap;
use std::time::Duration;

use strata_proto::link_probe::{MeasuredLink, MEASURE_TIMEOUT};
use strata_proto::{v1, WorkerClient};

use super::WorkerHandle;
use crate::planner::Link;

/// Peers one `MeasureLinks` asks for (the worker's own bound).
const MAX_PEERS: usize = 64;

/// Links measured between workers, by (from, to) address: kept across
/// surveys, as the coordinator's own links are.
pub type PeerLinks = BTreeMap<(String, String), Link>;

fn planner_link(m: MeasuredLink) -> Link {
    Link {
        latency_s: m.latency_s,
        bandwidth_bytes_per_s: m.bandwidth_bytes_per_s,
    }
}

fn describe(link: &Link) -> String {
    format!(
        "{:.0} us one way, {:.0} Mbit/s",
        link.latency_s * 1e6,
        link.bandwidth_bytes_per_s * 8e-6
    )
}

/// The measured link to a worker; a worker that cannot be measured (an
/// older one without `Echo`) is planned with the default link.
pub async fn link_or_warn(addr: &str, client: &WorkerClient) -> Option<Link> {
    match strata_proto::link_probe::measure_link(client).await {
        Ok(link) => {
            let link = planner_link(link);
            tracing::info!("worker {addr}: link {}", describe(&link));
            Some(link)
        }
        Err(e) => {
            tracing::warn!("worker {addr}: link not measured ({e}); planning with the default");
            None
        }
    }
}

/// Fills each worker's `peer_links` with its links to the workers of
/// other hosts: from `known`, else measured by the worker (one worker
/// after another, so that no two measurements share a link) and added to
/// `known`. A worker that cannot measure (an older one) keeps what is
/// known, and the planner falls back to the two ends' own links.
pub async fn measure_peer_links(workers: &mut [WorkerHandle], known: &mut PeerLinks) {
    for i in 0..workers.len() {
        let from = workers[i].addr.clone();
        let others: Vec<&WorkerHandle> = workers
            .iter()
            .filter(|w| host_of(&w.addr) != host_of(&from))
            .collect();
        let wanted: Vec<String> = others
            .iter()
            .filter(|w| !known.contains_key(&(from.clone(), w.addr.clone())))
            .map(|w| w.spec())
            .take(MAX_PEERS)
            .collect();
        if !wanted.is_empty() {
            measure_from(&from, &workers[i].client, wanted, known).await;
        }
        let links = others
            .iter()
            .filter_map(|w| {
                let link = known.get(&(from.clone(), w.addr.clone()))?;
                Some((w.addr.clone(), *link))
            })
            .collect();
        workers[i].peer_links = links;
    }
}

async fn measure_from(
    from: &str,
    client: &WorkerClient,
    peers: Vec<String>,
    known: &mut PeerLinks,
) {
    // Each peer is bounded by the worker; this bounds a worker that stalls.
    let limit = MEASURE_TIMEOUT * peers.len() as u32 + Duration::from_secs(5);
    let mut client = client.clone();
    let asked = client.measure_links(v1::MeasureLinksRequest { peers });
    let reply = match tokio::time::timeout(limit, asked).await {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(e)) => {
            tracing::warn!(
                "worker {from}: links to the other workers not measured ({}); \
                 planning its hops by the coordinator's links",
                strata_proto::link::status_text(&e)
            );
            return;
        }
        Err(_) => {
            tracing::warn!(
                "worker {from}: measuring its links took over {} s",
                limit.as_secs()
            );
            return;
        }
    };
    for p in reply.links {
        let Ok((to, _)) = strata_proto::parse_peer(&p.peer) else {
            continue;
        };
        let valid = p.bandwidth_bytes_per_s > 0.0
            && p.bandwidth_bytes_per_s.is_finite()
            && p.latency_s >= 0.0
            && p.latency_s.is_finite();
        if !p.error.is_empty() || !valid {
            tracing::warn!("worker {from}: link to {to} not measured ({})", p.error);
            continue;
        }
        let link = Link {
            latency_s: p.latency_s,
            bandwidth_bytes_per_s: p.bandwidth_bytes_per_s,
        };
        tracing::info!("worker {from}: link to {to} {}", describe(&link));
        known.insert((from.to_string(), to), link);
    }
}

/// The host part of `host:port`, as the planner groups workers.
pub fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}
