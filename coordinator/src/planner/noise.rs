//! Measurement noise, so the same pool gets the same placement.
//!
//! A worker measures its matvec bandwidth when it starts and reports the
//! free memory it sees when asked, so the same pool reports slightly
//! different numbers after every restart. Planned on the raw numbers, equal
//! workers swap layers from one start to the next, and what a worker saved
//! for its layers (prefix blocks on its own disk, `--kv-cache-dir`) is then
//! found by none. So the planner plans on steady numbers:
//! - workers of one host with the same hardware (backend, device, threads)
//!   share the mean of their speeds: any difference is noise;
//! - speeds within [`SPEED_NOISE`] of each other count as one speed (their
//!   mean), and free memory within [`MEMORY_NOISE`] as one size when memory
//!   balance breaks a tie (whether a stage fits is always the real number);
//! - workers are planned in a stable order (by name, the address), so a tie
//!   goes the same way whatever order the pool lists them in;
//! - the workers of one host share one link to the coordinator and one to
//!   each other host each way (the mean of what was measured): they sit
//!   behind one network card, and their measurements differ by jitter only.

use std::collections::BTreeMap;

use super::{dp, Link, WorkerSpec};

/// Relative spread of speeds that counts as noise: a CPU worker's read-rate
/// probe varies by about a tenth between starts on a busy machine.
pub const SPEED_NOISE: f64 = 0.15;

/// Relative spread of free memory that counts as noise when balancing (the
/// host's available memory moves with every other process).
pub const MEMORY_NOISE: f64 = 0.05;

/// Each worker's bandwidth as the planner uses it: unknown ones filled in,
/// same-hardware workers of one host pooled, then banded by [`SPEED_NOISE`].
pub fn steady_bandwidths(workers: &[WorkerSpec]) -> Vec<f64> {
    let measured = dp::bandwidths(workers);
    let pooled = same_hardware_means(workers, &measured);
    band_means(&pooled, SPEED_NOISE)
}

/// Relative spread of link figures that counts as noise: two measurements
/// of one LAN link read 275 and 350 us, a step or two of the probe's
/// rounding apart.
pub const LINK_NOISE: f64 = 0.5;

/// The workers with their links steadied, so that jitter does not pick the
/// plan:
/// - each host's workers get the mean of their links to the coordinator;
/// - two hosts are joined by one link: its latency the mean of every
///   figure measured between their workers either way (half a round trip
///   is the same both ways), its bandwidth the mean of the uploads measured
///   the hop's way, else the other way (a host pair nobody measured stays
///   unmeasured);
/// - latencies and bandwidths within [`LINK_NOISE`] of each other count as
///   one (their mean), the coordinator's and the workers' apart.
pub fn steady_links(workers: &[WorkerSpec]) -> Vec<WorkerSpec> {
    fn on<'a>(workers: &'a [WorkerSpec], host: &'a str) -> impl Iterator<Item = &'a WorkerSpec> {
        workers.iter().filter(move |w| w.host == host)
    }
    let mean = |values: &mut dyn Iterator<Item = f64>| {
        let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
        (n > 0).then(|| sum / n as f64)
    };
    // Every link measured from one host to another, by the way it was
    // measured (a worker's `peer_links` are its own way's figures).
    let mut measured: BTreeMap<(&str, &str), Vec<Link>> = BTreeMap::new();
    for a in workers {
        for b in workers.iter().filter(|b| b.host != a.host) {
            if let Some(l) = a.peer_links.get(&b.name) {
                measured.entry((&a.host, &b.host)).or_default().push(*l);
            }
        }
    }
    fn way<'a, 'w>(
        measured: &'a BTreeMap<(&'w str, &'w str), Vec<Link>>,
        from: &'w str,
        to: &'w str,
    ) -> &'a [Link] {
        measured.get(&(from, to)).map_or(&[], |v| v)
    }
    // The latency is half a round trip: the same link either way. The
    // bandwidth is an upload: this way's, else the other way's.
    let between = |from: &str, to: &str| {
        let (there, back) = (way(&measured, from, to), way(&measured, to, from));
        let latency_s = mean(&mut there.iter().chain(back).map(|l| l.latency_s))?;
        let uploads = if there.is_empty() { back } else { there };
        let bandwidth_bytes_per_s = mean(&mut uploads.iter().map(|l| l.bandwidth_bytes_per_s))?;
        Some(Link {
            latency_s,
            bandwidth_bytes_per_s,
        })
    };
    let mut steady: Vec<WorkerSpec> = workers
        .iter()
        .map(|w| {
            let own: Vec<Link> = on(workers, &w.host).map(|m| m.link).collect();
            let own = Link {
                latency_s: mean(&mut own.iter().map(|l| l.latency_s)).unwrap_or_default(),
                bandwidth_bytes_per_s: mean(&mut own.iter().map(|l| l.bandwidth_bytes_per_s))
                    .unwrap_or_default(),
            };
            let peer_links = workers
                .iter()
                .filter(|o| o.host != w.host)
                .filter_map(|o| Some((o.name.clone(), between(&w.host, &o.host)?)))
                .collect();
            WorkerSpec {
                link: own,
                peer_links,
                ..w.clone()
            }
        })
        .collect();
    band_links(steady.iter_mut().map(|w| &mut w.link).collect());
    band_links(
        steady
            .iter_mut()
            .flat_map(|w| w.peer_links.values_mut())
            .collect(),
    );
    steady
}

/// Bands the latencies and the bandwidths of `links` by [`LINK_NOISE`].
fn band_links(mut links: Vec<&mut Link>) {
    let latency: Vec<f64> = links.iter().map(|l| l.latency_s).collect();
    let bandwidth: Vec<f64> = links.iter().map(|l| l.bandwidth_bytes_per_s).collect();
    let (latency, bandwidth) = (
        band_means(&latency, LINK_NOISE),
        band_means(&bandwidth, LINK_NOISE),
    );
    for (i, l) in links.iter_mut().enumerate() {
        l.latency_s = latency[i];
        l.bandwidth_bytes_per_s = bandwidth[i];
    }
}

/// Capacities for the memory-balance tie-break, banded by [`MEMORY_NOISE`].
pub(super) fn steady_capacities(usable_bytes: &[u64]) -> Vec<u64> {
    let values: Vec<f64> = usable_bytes.iter().map(|&b| b as f64).collect();
    band_means(&values, MEMORY_NOISE)
        .into_iter()
        .map(|b| b as u64)
        .collect()
}

/// Worker indices in the order the planner tries them: by name (stable
/// sort, so workers of one name keep their given order).
pub(super) fn stable_order(workers: &[WorkerSpec]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..workers.len()).collect();
    order.sort_by(|&a, &b| workers[a].name.cmp(&workers[b].name));
    order
}

/// Workers of one host with the same (known) hardware get the mean of
/// their values.
fn same_hardware_means(workers: &[WorkerSpec], values: &[f64]) -> Vec<f64> {
    let peers = |i: usize| {
        let w = &workers[i];
        (0..workers.len()).filter(move |&j| {
            j == i
                || (!w.hardware.is_empty()
                    && workers[j].hardware == w.hardware
                    && workers[j].host == w.host)
        })
    };
    (0..workers.len())
        .map(|i| {
            let (sum, n) = peers(i).fold((0.0, 0usize), |(s, n), j| (s + values[j], n + 1));
            sum / n as f64
        })
        .collect()
}

/// Replaces each value by the mean of its band. From the largest value
/// down, a band takes every value within `rel` below its largest. The
/// result depends only on the values, not their order.
fn band_means(values: &[f64], rel: f64) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    let mut out = values.to_vec();
    let mut start = 0;
    while start < order.len() {
        let top = values[order[start]];
        let end = start
            + order[start..]
                .iter()
                .take_while(|&&i| values[i] >= top * (1.0 - rel))
                .count();
        let band = &order[start..end];
        let mean = band.iter().map(|&i| values[i]).sum::<f64>() / band.len() as f64;
        for &i in band {
            out[i] = mean;
        }
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::Backend;

    #[test]
    fn a_band_takes_values_within_the_noise_of_its_largest() {
        let v = [100.0, 91.0, 86.0, 84.0, 50.0];
        let b = band_means(&v, 0.15);
        let top = (100.0 + 91.0 + 86.0) / 3.0;
        assert_eq!(&b[..3], &[top, top, top]);
        assert_eq!(&b[3..], &[84.0, 50.0]);
        let shuffled = [84.0, 50.0, 91.0, 100.0, 86.0];
        let bs = band_means(&shuffled, 0.15);
        assert_eq!(bs, vec![84.0, 50.0, top, top, top]);
    }

    #[test]
    fn same_hardware_of_one_host_shares_one_speed() {
        let w = |name: &str, host: &str, hw: &str| {
            let mut w = WorkerSpec::new(name, Backend::Cpu, host, 1 << 30);
            w.hardware = hw.into();
            w
        };
        let workers = [
            w("a", "h", "cpu x4"),
            w("b", "h", "cpu x4"),
            w("c", "h", "cpu x8"),
            w("d", "g", "cpu x4"),
            w("e", "h", ""),
            w("f", "h", ""),
        ];
        let m = same_hardware_means(&workers, &[1.0, 3.0, 5.0, 7.0, 9.0, 11.0]);
        assert_eq!(m, vec![2.0, 2.0, 5.0, 7.0, 9.0, 11.0]);
    }

    #[test]
    fn the_workers_of_one_host_share_its_links() {
        let link = |us: f64| Link {
            latency_s: us * 1e-6,
            bandwidth_bytes_per_s: 1e9,
        };
        let w = |name: &str, host: &str, us: f64| {
            WorkerSpec::new(name, Backend::Cuda, host, 1 << 30).with_link(link(us))
        };
        let peers = |to: &[(&str, f64)]| {
            to.iter()
                .map(|&(n, us)| (n.to_string(), link(us)))
                .collect()
        };
        let workers = [
            w("a", "h", 200.0).with_peer_links(peers(&[("c", 100.0)])),
            w("b", "h", 400.0),
            w("c", "g", 10_000.0).with_peer_links(peers(&[("b", 300.0)])),
            w("d", "f", 10_000.0),
        ];
        let steady = steady_links(&workers);
        // 200 and 400 us are one host's link, and within the noise of each other.
        assert_eq!(steady[0].link, link(300.0));
        assert_eq!(steady[1].link, link(300.0));
        assert_eq!(steady[2].link, link(10_000.0));
        // h and g: 100 us one way, 300 the other, from different workers:
        // one link of 200 us, both ways, for every worker of the two hosts.
        assert_eq!(steady[0].peer_links, peers(&[("c", 200.0)]));
        assert_eq!(steady[1].peer_links, peers(&[("c", 200.0)]));
        assert_eq!(steady[2].peer_links, peers(&[("a", 200.0), ("b", 200.0)]));
        // Nobody measured f.
        assert!(steady[3].peer_links.is_empty());
    }

    #[test]
    fn a_hop_is_charged_the_upload_of_its_own_way() {
        let link = |bandwidth_bytes_per_s: f64| Link {
            latency_s: 1e-4,
            bandwidth_bytes_per_s,
        };
        let w = |name: &str, to: &[(&str, f64)]| {
            let peers = to
                .iter()
                .map(|&(n, bw)| (n.to_string(), link(bw)))
                .collect();
            WorkerSpec::new(name, Backend::Cuda, name, 1 << 30)
                .with_link(link(1e9))
                .with_peer_links(peers)
        };
        // x uploads to y at 1 GB/s, y to x at 100 MB/s (an asymmetric
        // line); z was measured by z only.
        let workers = [
            w("x", &[("y", 1e9)]),
            w("y", &[("x", 1e8)]),
            w("z", &[("x", 1e8)]),
        ];
        let steady = steady_links(&workers);
        let bw = |i: usize, to: &str| steady[i].peer_links[to].bandwidth_bytes_per_s;
        assert_eq!((bw(0, "y"), bw(1, "x")), (1e9, 1e8));
        // Only one way measured: both ways get it.
        assert_eq!((bw(0, "z"), bw(2, "x")), (1e8, 1e8));
        assert!(!steady[1].peer_links.contains_key("z"));
    }
}
