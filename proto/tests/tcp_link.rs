//! The TCP data link (`transport::tcp`) over real loopback sockets and the
//! worker's TLS acceptor: what one stage's compute thread writes, the next
//! one's reads whole and in order; the cluster token and the pinned
//! certificate decide who may connect; either end sees the other go.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use strata_proto::accept::{tls_incoming, OnLink};
use strata_proto::transport::tcp::{LinkConn, LinkWriter, REPLY_QUEUE_BYTES};
use strata_proto::transport::tcp_peer::TcpPeer;
use strata_proto::transport::ReplyStream;
use strata_proto::v1::{self, link_message::Kind};
use strata_proto::{tls, NodeIdentity};
use tokio_stream::StreamExt;

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
            w.send(m, &|| false).unwrap();
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

/// Opens the reply line of `route` from the coordinator's end, and takes
/// it on the worker's: it opens only once the worker answers.
fn open_line(
    rt: &tokio::runtime::Runtime,
    peer: &std::sync::Arc<TcpPeer>,
    links: &mpsc::Receiver<LinkConn>,
    route: u64,
) -> (ReplyStream, LinkConn) {
    use strata_proto::transport::Transport;
    let opening = rt.spawn({
        let peer = peer.clone();
        async move { peer.replies(route).await }
    });
    let mut line_link = links.recv_timeout(Duration::from_secs(10)).unwrap();
    let (hello, _) = read_n(&mut line_link, 1);
    assert_eq!(hello[0].kind, Some(Kind::ReplyLine(route)));
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !opening.is_finished(),
        "the line opened before the worker took it"
    );
    line_link.send(&hello[0]).unwrap();
    (rt.block_on(opening).unwrap().unwrap(), line_link)
}

fn next_reply(
    rt: &tokio::runtime::Runtime,
    s: &mut ReplyStream,
) -> Option<Result<v1::StageReply, tonic::Status>> {
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), s.next()).await })
        .expect("a reply within 20 s")
}

/// A gRPC client for the fall-back a `TcpPeer` must be given; never used
/// here (it would connect nowhere).
fn unused_grpc() -> strata_proto::WorkerClient {
    let channel = tonic::transport::Channel::from_static("http://127.0.0.1:9").connect_lazy();
    let token = strata_proto::BearerToken::new(TOKEN).unwrap();
    strata_proto::v1::worker_client::WorkerClient::with_interceptor(channel, token)
}

/// The coordinator's end (`TcpPeer`): its data stream's frames reach the
/// worker's compute thread, and replies come back on the data stream (a
/// frame with no route) and on a reply line, which names its route first.
#[test]
fn a_coordinators_data_stream_and_reply_line_round_trip() {
    use strata_proto::transport::Transport;

    let id = NodeIdentity::generate().unwrap();
    let (rt, addr, links) = listen(&id);
    let peer = TcpPeer::new(&addr.to_string(), TOKEN, id.fingerprint(), {
        let _in_runtime = rt.enter();
        unused_grpc()
    });
    let (frames, rx) = tokio::sync::mpsc::channel(4);
    let mut replies = rt
        .block_on(peer.forward(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .unwrap();
    let mut stream_link = links.recv_timeout(Duration::from_secs(10)).unwrap();
    let (mut line, mut line_link) = open_line(&rt, &std::sync::Arc::new(peer), &links, 41);

    let Some(Kind::Frame(sent)) = frame(5, vec![3; 1 << 20]).kind else {
        unreachable!()
    };
    rt.block_on(frames.send(sent.clone())).unwrap();
    let (got, _) = read_n(&mut stream_link, 1);
    assert_eq!(got[0].kind, Some(Kind::Frame(sent)));

    let reply = |batch_id| v1::StageReply {
        batch_id,
        error: "a test".into(),
        ..Default::default()
    };
    for (conn, batch_id) in [(&mut stream_link, 5), (&mut line_link, 6)] {
        let msg = v1::LinkMessage {
            kind: Some(Kind::Reply(reply(batch_id))),
        };
        conn.send(&msg).unwrap();
    }
    let next = |s: &mut ReplyStream| next_reply(&rt, s);
    assert_eq!(next(&mut replies).unwrap().unwrap(), reply(5));
    assert_eq!(next(&mut line).unwrap().unwrap(), reply(6));

    // The worker ending the data stream ends its replies (with an error:
    // the socket closed without TLS's close_notify).
    stream_link.shutdown().unwrap();
    drop(stream_link);
    match next(&mut replies) {
        None | Some(Err(_)) => {}
        Some(Ok(r)) => panic!("a reply after the link closed: {r:?}"),
    }
}

/// A coordinator that stops reading its reply line never holds up the
/// worker's compute thread: once the socket's buffers are full each reply
/// queues at once, the queue goes out in order once the
/// coordinator reads again, and past `REPLY_QUEUE_BYTES` a send fails (the
/// line ends) instead of the queue growing.
#[test]
fn replies_queue_for_a_coordinator_that_reads_slowly_and_the_queue_is_bounded() {
    let id = NodeIdentity::generate().unwrap();
    let (rt, addr, links) = listen(&id);
    let peer = TcpPeer::new(&addr.to_string(), TOKEN, id.fingerprint(), {
        let _in_runtime = rt.enter();
        unused_grpc()
    });
    let (mut line, mut line_link) = open_line(&rt, &std::sync::Arc::new(peer), &links, 9);
    const MIB: usize = 1 << 20;
    let reply = |batch_id| v1::LinkMessage {
        kind: Some(Kind::Reply(v1::StageReply {
            batch_id,
            error: "x".repeat(MIB),
            ..Default::default()
        })),
    };
    // Nothing polls `line` now, so nothing reads the socket: send until the
    // socket's buffers are full and replies queue, then 4 more.
    let mut sent = 0;
    let mut queued = 0;
    while queued < 4 {
        let t = Instant::now();
        line_link.send(&reply(sent)).unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "send {sent} waited for the reader"
        );
        sent += 1;
        queued += line_link.wants_write() as u32;
        assert!(sent < 48, "the socket took 48 MiB: nothing queued");
    }
    let flusher = std::thread::spawn(move || {
        // What the compute thread's poll loop does while replies wait.
        let deadline = Instant::now() + Duration::from_secs(20);
        while line_link.wants_write() {
            line_link.flush().unwrap();
            assert!(Instant::now() < deadline, "the queue never emptied");
            std::thread::sleep(Duration::from_millis(1));
        }
        line_link
    });
    for b in 0..sent {
        let got = next_reply(&rt, &mut line).unwrap().unwrap();
        assert_eq!(got.batch_id, b, "replies out of order");
        assert_eq!(got.error.len(), MIB);
    }
    let mut line_link = flusher.join().unwrap();

    let mut queued = 0;
    let e = loop {
        match line_link.send(&reply(100)) {
            Ok(()) => queued += MIB,
            Err(e) => break e,
        }
        assert!(
            queued < 2 * REPLY_QUEUE_BYTES,
            "the queue grew past its bound"
        );
    };
    assert!(e.to_string().contains("reads too slowly"), "{e}");
    assert!(
        queued >= REPLY_QUEUE_BYTES - MIB,
        "ended after {queued} bytes"
    );
}
