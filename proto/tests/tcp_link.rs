//! The TCP data link (`transport::tcp`) over real loopback sockets and the
//! worker's TLS acceptor: what one stage's compute thread writes, the next
//! one's reads whole and in order; the cluster token and the pinned
//! certificate decide who may connect; either end sees the other go.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use strata_proto::accept::{tls_incoming, OnLink};
use strata_proto::transport::tcp::{LinkConn, LinkWriter};
use strata_proto::v1::{self, link_message::Kind};
use strata_proto::{tls, NodeIdentity};

const TOKEN: &str = "tcp-link-test-token";

/// A worker's TLS port whose link connections come out of the receiver.
/// The runtime serves it while the returned values live.
fn listen(
    id: &NodeIdentity,
) -> (
    tokio::runtime::Runtime,
    SocketAddr,
    mpsc::Receiver<LinkConn>,
) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let config = tls::server_config(id, TOKEN).unwrap();
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let on_link: OnLink = std::sync::Arc::new(move |tls| {
        let reader = LinkConn::from_accepted(tls).unwrap();
        tx.lock().unwrap().send(reader).unwrap();
    });
    let addr = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tls_incoming(listener, config, Some(on_link));
        // Accepting lasts as long as the stream of gRPC connections.
        tokio::spawn(async move {
            let _keep = incoming;
            std::future::pending::<()>().await
        });
        addr
    });
    (rt, addr, rx)
}

/// Reads until `n` messages came, or the link closed.
fn read_n(reader: &mut LinkConn, n: usize) -> (Vec<v1::LinkMessage>, bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        if !reader.read(&mut out).unwrap() {
            return (out, false);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    (out, true)
}

fn frame(batch_id: u64, activations: Vec<u8>) -> v1::LinkMessage {
    v1::LinkMessage {
        kind: Some(Kind::Frame(v1::BatchFrame {
            header: Some(v1::BatchHeader {
                batch_id,
                reply_route: 7,
                ..Default::default()
            }),
            activations,
            ..Default::default()
        })),
    }
}

/// A prompt's hidden states (6 MiB, far past TLS's 64 KiB of plaintext at
/// a time), a decode frame and a release arrive whole and in order.
#[test]
fn frames_and_releases_arrive_whole_and_in_order() {
    let id = NodeIdentity::generate().unwrap();
    let (_rt, addr, links) = listen(&id);
    let sent = vec![
        frame(1, (0..6 << 20).map(|i| (i % 251) as u8).collect()),
        frame(2, vec![1; 2304]),
        v1::LinkMessage {
            kind: Some(Kind::Release(v1::ReleaseRequest {
                seq_ids: vec![3, 4],
                ..Default::default()
            })),
        },
    ];
    let to_send = sent.clone();
    let writer = std::thread::spawn(move || {
        let mut w = LinkWriter::connect(&addr.to_string(), TOKEN, id.fingerprint()).unwrap();
        for m in &to_send {
            w.send(m).unwrap();
        }
        w
    });
    let mut reader = links.recv_timeout(Duration::from_secs(10)).unwrap();
    let (got, open) = read_n(&mut reader, sent.len());
    assert!(open);
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "messages changed on the way");

    // The writer closing ends the link on the reader's side.
    drop(writer.join().unwrap());
    let (more, open) = read_n(&mut reader, 1);
    assert!(more.is_empty() && !open, "the link should read as closed");
}

/// The reader going away shows on the writer's side (what the stage
/// thread learns from `poll` when a next stage dies).
#[test]
fn the_writer_sees_the_reader_go() {
    let id = NodeIdentity::generate().unwrap();
    let (_rt, addr, links) = listen(&id);
    let mut w = LinkWriter::connect(&addr.to_string(), TOKEN, id.fingerprint()).unwrap();
    let reader = links.recv_timeout(Duration::from_secs(10)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(!w.peer_closed(), "an open link read as closed");
    drop(reader);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !w.peer_closed() {
        assert!(Instant::now() < deadline, "the closed link never showed");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Without the cluster token, or to another certificate than the pinned
/// one, the handshake fails: no link reaches the worker.
#[test]
fn a_wrong_token_or_pin_gets_no_link() {
    let id = NodeIdentity::generate().unwrap();
    let (_rt, addr, links) = listen(&id);
    let e = match LinkWriter::connect(&addr.to_string(), "another-token", id.fingerprint()) {
        Err(e) => e,
        Ok(_) => panic!("a link without the cluster token"),
    };
    assert!(e.contains("TCP data link to"), "{e}");
    let other = NodeIdentity::generate().unwrap().fingerprint();
    if LinkWriter::connect(&addr.to_string(), TOKEN, other).is_ok() {
        panic!("a link to an unpinned certificate");
    }
    assert!(links.recv_timeout(Duration::from_millis(500)).is_err());
}
