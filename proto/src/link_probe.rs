//! Measuring a link with `Echo` round trips: the coordinator to each worker,
//! and each worker to the others (`MeasureLinks`), so that the planner
//! charges each hop what it costs (a slow link gets fewer boundaries).
//!
//! The round trip is the gRPC one (TLS, HTTP/2, a wake-up at each end), as
//! a data-plane hop pays it. Results are snapped to coarse steps so that a
//! restart's jitter does not move the plan.

use std::time::{Duration, Instant};

use crate::{v1, WorkerClient};

/// Small round trips timed (after one to warm the connection).
const PINGS: usize = 8;
/// Bytes sent to time the bandwidth, and how many times (the fastest counts).
const BULK_BYTES: usize = 1 << 20;
const BULKS: usize = 3;
/// Latency is rounded up to a multiple of this.
const LATENCY_STEP_S: f64 = 25e-6;
/// Bandwidth is snapped to a power of this factor.
const BANDWIDTH_STEP: f64 = std::f64::consts::SQRT_2;
/// Faster than this is taken as this (loopback, shared memory).
pub const MAX_BANDWIDTH_BYTES_PER_S: f64 = 64e9;
/// The whole measurement gives up after this.
pub const MEASURE_TIMEOUT: Duration = Duration::from_secs(10);
/// A worker connects to a peer it measures within this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// What one peer of `MeasureLinks` may take at most.
pub const PEER_TIMEOUT: Duration = CONNECT_TIMEOUT.saturating_add(MEASURE_TIMEOUT);
/// Peers one `MeasureLinks` may name: a pool's workers, with room to spare.
pub const MAX_PEERS: usize = 64;
/// Largest reply a probing client accepts (an echo's reply is empty).
pub const MAX_REPLY_BYTES: usize = 64 << 10;

/// One-way latency and upload bandwidth, snapped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeasuredLink {
    pub latency_s: f64,
    pub bandwidth_bytes_per_s: f64,
}

/// One-way latency (half the fastest round trip) and the upload bandwidth
/// to the worker behind `client`. The fastest, because load on a busy box
/// only ever adds to a round trip: a median moved from 300 to 1,225 us
/// between two starts of one pool on the emulated LAN, and moved the plan.
pub async fn measure_link(client: &WorkerClient) -> Result<MeasuredLink, String> {
    tokio::time::timeout(MEASURE_TIMEOUT, measure(client.clone()))
        .await
        .map_err(|_| format!("link measurement took over {} s", MEASURE_TIMEOUT.as_secs()))?
}

async fn measure(mut client: WorkerClient) -> Result<MeasuredLink, String> {
    let mut rtt = f64::INFINITY;
    for i in 0..=PINGS {
        let took = round_trip(&mut client, Vec::new()).await?;
        if i > 0 {
            rtt = rtt.min(took);
        }
    }
    let mut bulk = f64::INFINITY;
    for _ in 0..BULKS {
        bulk = bulk.min(round_trip(&mut client, vec![0; BULK_BYTES]).await?);
    }
    let wire_s = (bulk - rtt).max(BULK_BYTES as f64 / MAX_BANDWIDTH_BYTES_PER_S);
    Ok(snapped(rtt / 2.0, BULK_BYTES as f64 / wire_s))
}

async fn round_trip(client: &mut WorkerClient, payload: Vec<u8>) -> Result<f64, String> {
    let started = Instant::now();
    client
        .echo(v1::EchoRequest {
            payload,
            reply_bytes: 0,
        })
        .await
        .map_err(|e| format!("echo: {}", crate::link::status_text(&e)))?;
    Ok(started.elapsed().as_secs_f64())
}

/// Coarse steps: latency up to the next [`LATENCY_STEP_S`], bandwidth to
/// the nearest power of [`BANDWIDTH_STEP`].
fn snapped(latency_s: f64, bandwidth_bytes_per_s: f64) -> MeasuredLink {
    let steps = bandwidth_bytes_per_s.max(1.0).log(BANDWIDTH_STEP).round();
    MeasuredLink {
        latency_s: (latency_s / LATENCY_STEP_S).ceil().max(1.0) * LATENCY_STEP_S,
        bandwidth_bytes_per_s: BANDWIDTH_STEP.powf(steps).min(MAX_BANDWIDTH_BYTES_PER_S),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measurements_are_snapped_to_coarse_steps() {
        let a = snapped(101e-6, 118e6);
        let b = snapped(124e-6, 121e6);
        assert_eq!(a, b, "jitter inside one step gives one link");
        assert_eq!(a.latency_s, 125e-6);
        assert!(snapped(1e-9, 1e12).bandwidth_bytes_per_s <= MAX_BANDWIDTH_BYTES_PER_S);
        assert_eq!(snapped(0.0, 1e6).latency_s, LATENCY_STEP_S);
    }
}
