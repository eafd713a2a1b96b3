//! The links the planner charges hops by: the coordinator's own to each
//! worker (`Echo` round trips, `strata_proto::link_probe`), and each
//! worker's to the others on other hosts (`MeasureLinks`, the same round
//! trips made by the worker), so that a pool whose workers sit on one
//! switch while the coordinator is far away is planned by the links its
//! hidden states really cross.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use strata_proto::link_probe::{MeasuredLink, MAX_PEERS, PEER_TIMEOUT};
use strata_proto::{v1, WorkerClient};

use super::WorkerHandle;
use crate::planner::Link;

/// A pair that could not be measured is asked again after this (an older
/// worker without `MeasureLinks` is not asked at every survey).
const RETRY_AFTER: Duration = Duration::from_secs(600);

/// Links measured between workers, kept across surveys as the coordinator's
/// own links are. Each way of a pair is measured, since a firewall may let
/// a worker out and nothing in (the planner takes the mean of the two
/// ways' figures: `noise::steady_links`).
#[derive(Default)]
pub struct PeerLinks {
    measured: BTreeMap<(String, String), Link>,
    failed: BTreeMap<(String, String), Failed>,
}

/// A pair, one way, that was not measured.
struct Failed {
    at: Instant,
    /// The first worker could not connect to the second (not only failed
    /// to measure): the planner keeps that hop out of its plans.
    unreachable: bool,
}

impl PeerLinks {
    pub fn new() -> Self {
        Self::default()
    }

    /// What `from` measured of its way to `to`.
    fn get(&self, from: &str, to: &str) -> Option<Link> {
        self.measured
            .get(&(from.to_string(), to.to_string()))
            .copied()
    }

    /// Not measured this way and not failed a moment ago: a way that
    /// failed (unreachable, cut short, a worker too old to measure) is
    /// asked again [`RETRY_AFTER`] later, not at every survey. An
    /// unreachable way is asked again though it was measured once: it may
    /// have been blocked since, or let through.
    fn wanted(&self, from: &str, to: &str, now: Instant) -> bool {
        let key = (from.to_string(), to.to_string());
        match self.failed.get(&key) {
            Some(f) => {
                (f.unreachable || self.get(from, to).is_none())
                    && now.duration_since(f.at) >= RETRY_AFTER
            }
            None => self.get(from, to).is_none(),
        }
    }

    /// The workers `from` could not connect to when last asked.
    fn unreachable_from(&self, from: &str) -> BTreeSet<String> {
        self.failed
            .iter()
            .filter(|((a, _), f)| a == from && f.unreachable)
            .map(|((_, b), _)| b.clone())
            .collect()
    }

    /// Keeps what `from` measured of its link to `to` (or why it could not).
    fn record(&mut self, from: &str, to: &str, p: &v1::PeerLink, at: Instant) {
        let key = (from.to_string(), to.to_string());
        let valid = p.bandwidth_bytes_per_s > 0.0
            && p.bandwidth_bytes_per_s.is_finite()
            && p.latency_s >= 0.0
            && p.latency_s.is_finite();
        if !p.error.is_empty() || !valid {
            let unreachable = p.unreachable && !p.error.is_empty();
            if unreachable {
                tracing::warn!(
                    "worker {from} cannot connect to {to}: it is not planned as the stage before it"
                );
            } else {
                tracing::warn!(
                    "worker {from}: link to {to} {}",
                    if p.error.is_empty() {
                        "not measured"
                    } else {
                        &p.error
                    }
                );
            }
            self.failed.insert(key, Failed { at, unreachable });
            return;
        }
        let link = Link {
            latency_s: p.latency_s,
            bandwidth_bytes_per_s: p.bandwidth_bytes_per_s,
        };
        tracing::info!("worker {from}: link to {to} {}", describe(&link));
        self.failed.remove(&key);
        self.measured.insert(key, link);
    }
}

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
/// other hosts: from `known`, else measured by the worker (when `measuring`
/// says it may: an idle worker; one worker after another, so that no two
/// measurements share a link) and added to `known`. A worker's
/// `peer_links` hold its own ways' figures; the planner fills in a way
/// measured only the other way round (`noise::steady_links`), and charges
/// a pair measured neither way (an older worker) by the two ends' links to
/// the coordinator.
pub async fn measure_peer_links(
    workers: &mut [WorkerHandle],
    known: &mut PeerLinks,
    measuring: impl Fn(&str) -> bool,
) {
    for i in 0..workers.len() {
        let from = workers[i].addr.clone();
        if !measuring(&from) {
            continue;
        }
        let wanted: Vec<&WorkerHandle> = workers
            .iter()
            .filter(|w| {
                host_of(&w.addr) != host_of(&from) && known.wanted(&from, &w.addr, Instant::now())
            })
            .take(MAX_PEERS)
            .collect();
        if !wanted.is_empty() {
            let peers: Vec<(String, String)> =
                wanted.iter().map(|w| (w.addr.clone(), w.spec())).collect();
            measure_from(&from, &workers[i].client, peers, known).await;
        }
    }
    for i in 0..workers.len() {
        let from = workers[i].addr.clone();
        let links = workers
            .iter()
            .filter(|w| host_of(&w.addr) != host_of(&from))
            .filter_map(|w| Some((w.addr.clone(), known.get(&from, &w.addr)?)))
            .collect();
        workers[i].peer_links = links;
        workers[i].unreachable = known.unreachable_from(&from);
    }
}

/// Asks the worker at `from` to measure `peers` (address, spec); keeps
/// what it measured of them and when the others failed.
async fn measure_from(
    from: &str,
    client: &WorkerClient,
    peers: Vec<(String, String)>,
    known: &mut PeerLinks,
) {
    let failed_at = Instant::now();
    for (to, _) in &peers {
        let key = (from.to_string(), to.clone());
        // Until the worker says otherwise, a way found unreachable stays so.
        let unreachable = known.failed.get(&key).is_some_and(|f| f.unreachable);
        let failed = Failed {
            at: failed_at,
            unreachable,
        };
        known.failed.insert(key, failed);
    }
    // The worker bounds each peer; this bounds a worker that stalls.
    let limit = PEER_TIMEOUT * peers.len() as u32 + Duration::from_secs(5);
    let specs = peers.iter().map(|(_, spec)| spec.clone()).collect();
    let mut client = client.clone();
    let asked = client.measure_links(v1::MeasureLinksRequest { peers: specs });
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
    // Only what was asked, once each, in the request's order.
    for ((to, _), p) in peers.iter().zip(reply.links) {
        known.record(from, to, &p, failed_at);
    }
}

/// The host part of `host:port`, as the planner groups workers.
pub fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(latency_s: f64, error: &str, unreachable: bool) -> v1::PeerLink {
        v1::PeerLink {
            latency_s,
            bandwidth_bytes_per_s: if error.is_empty() { 1e8 } else { 0.0 },
            error: error.into(),
            unreachable,
            ..Default::default()
        }
    }

    #[test]
    fn each_way_of_a_pair_is_measured() {
        // A firewall that lets d out and nothing in: measured d -> e first,
        // the blocked way e -> d is still asked, and found.
        let mut known = PeerLinks::new();
        let now = Instant::now();
        assert!(known.wanted("d", "e", now) && known.wanted("e", "d", now));
        known.record("d", "e", &reply(1e-4, "", false), now);
        assert!(!known.wanted("d", "e", now));
        assert!(known.wanted("e", "d", now));
        known.record("e", "d", &reply(0.0, "connection refused", true), now);
        assert_eq!(known.unreachable_from("e"), ["d".to_string()].into());
        assert!(known.unreachable_from("d").is_empty());
        // Measured both ways: each way's figure is kept.
        known.record("e", "d", &reply(3e-4, "", false), now + RETRY_AFTER);
        assert_eq!(known.get("d", "e").map(|l| l.latency_s), Some(1e-4));
        assert_eq!(known.get("e", "d").map(|l| l.latency_s), Some(3e-4));
        assert!(!known.wanted("e", "d", now + RETRY_AFTER * 2));
    }

    #[test]
    fn an_unreachable_way_is_kept_one_way_and_asked_again_later() {
        let mut known = PeerLinks::new();
        let now = Instant::now();
        known.record("a", "b", &reply(0.0, "not measured", true), now);
        known.record("a", "c", &reply(0.0, "not measured", false), now);
        assert_eq!(known.unreachable_from("a"), ["b".to_string()].into());
        assert!(known.unreachable_from("b").is_empty());
        // The other way is still asked, and measured; the failed ways are
        // not asked again until RETRY_AFTER has passed.
        assert!(known.wanted("b", "a", now));
        known.record("b", "a", &reply(1e-4, "", false), now);
        assert_eq!(known.get("b", "a").map(|l| l.latency_s), Some(1e-4));
        assert_eq!(
            known.get("a", "b"),
            None,
            "a figure is kept for its own way"
        );
        assert!(!known.wanted("a", "b", now) && !known.wanted("a", "c", now));
        assert_eq!(known.unreachable_from("a"), ["b".to_string()].into());
        let later = now + RETRY_AFTER;
        assert!(known.wanted("a", "b", later) && known.wanted("a", "c", later));
        // A way that failed only to measure is asked again too, though the
        // other way was measured (the measurement may have been cut short).
        known.record("c", "a", &reply(3e-4, "", false), now);
        assert!(known.wanted("a", "c", later));
        // Measured at last: no longer unreachable.
        known.record("a", "b", &reply(2e-4, "", false), later);
        assert!(known.unreachable_from("a").is_empty());
        assert!(!known.wanted("a", "b", later + RETRY_AFTER));
        // A flag without an error is a measurement that went wrong, not an
        // unreachable peer.
        known.record("a", "d", &reply(f64::NAN, "", true), now);
        assert!(known.unreachable_from("a").is_empty());
    }
}
