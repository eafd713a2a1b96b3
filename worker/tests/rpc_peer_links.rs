//! `MeasureLinks` between real workers on loopback: a peer that answers is
//! measured; one this worker cannot connect to (nothing listens there, or
//! its certificate is not the pinned one) is reported unreachable, as a
//! data stream to it would fail, so the planner keeps it from being this
//! worker's next stage.

mod rpc_common;

use rpc_common::*;
use strata_proto::v1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_are_measured_or_reported_unreachable() {
    let a = start_worker(None, None).await;
    let b = start_worker(None, None).await;
    let (b_addr, b_pin) = strata_proto::parse_peer(&b.addr).unwrap();
    let b_pin = b_pin.expect("a TLS worker");
    // A port nothing listens on (bound, then let go).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let other_pin = strata_proto::NodeIdentity::generate()
        .unwrap()
        .fingerprint();
    let peers = vec![
        b.addr.clone(),
        format!("{closed}#{b_pin}"),
        format!("{b_addr}#{other_pin}"),
    ];
    let links = client(&a.addr)
        .await
        .measure_links(v1::MeasureLinksRequest {
            peers: peers.clone(),
        })
        .await
        .expect("MeasureLinks")
        .into_inner()
        .links;
    assert_eq!(links.len(), 3, "{links:?}");
    for (l, peer) in links.iter().zip(&peers) {
        assert_eq!(&l.peer, peer);
    }

    let measured = &links[0];
    assert!(
        measured.error.is_empty() && !measured.unreachable,
        "{measured:?}"
    );
    assert!(measured.latency_s > 0.0 && measured.bandwidth_bytes_per_s > 0.0);

    for (why, l) in [
        ("nothing listens", &links[1]),
        ("another certificate", &links[2]),
    ] {
        assert!(l.unreachable, "{why}: {l:?}");
        assert!(!l.error.is_empty(), "{why}: {l:?}");
        assert_eq!(l.bandwidth_bytes_per_s, 0.0, "{why}: {l:?}");
    }
}
