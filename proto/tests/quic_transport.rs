//! The QUIC data plane on loopback, real quinn at both ends: frames and
//! replies round-trip, reply lines open by route, and a caller without the
//! cluster token or a worker without the pinned certificate is refused in
//! the handshake.

use std::sync::Arc;

use strata_proto::transport::quic::{self, QuicPeer};
use strata_proto::transport::{DataPlane, InboundFrames, ReplyStream, Transport};
use strata_proto::{v1, NodeIdentity};
use tokio_stream::StreamExt;
use tonic::Status;

/// Replies to each frame with its batch id doubled; a reply line gives one
/// reply carrying its route.
struct Echo;

impl DataPlane for Echo {
    fn forward(&self, frames: InboundFrames) -> ReplyStream {
        Box::pin(frames.map(|f| {
            let f = f?;
            let id = f.header.map_or(0, |h| h.batch_id);
            Ok(v1::StageReply {
                batch_id: id * 2,
                ..Default::default()
            })
        }))
    }

    fn replies(&self, route: u64) -> Result<ReplyStream, Status> {
        if route == 0 {
            return Err(Status::invalid_argument("route 0"));
        }
        let reply = v1::StageReply {
            batch_id: route,
            ..Default::default()
        };
        Ok(Box::pin(tokio_stream::iter([Ok(reply)])))
    }
}

fn frame(batch_id: u64, payload: usize) -> v1::BatchFrame {
    v1::BatchFrame {
        header: Some(v1::BatchHeader {
            batch_id,
            ..Default::default()
        }),
        activations: vec![7u8; payload],
        ..Default::default()
    }
}

async fn worker(token: &str) -> (String, strata_proto::Fingerprint, quinn::Endpoint) {
    let id = NodeIdentity::generate().unwrap();
    let endpoint = quic::bind("127.0.0.1:0".parse().unwrap(), &id, token).unwrap();
    let addr = endpoint.local_addr().unwrap().to_string();
    tokio::spawn(quic::serve(endpoint.clone(), Arc::new(Echo)));
    (addr, id.fingerprint(), endpoint)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_and_reply_lines_round_trip() {
    let (addr, pin, endpoint) = worker("s3cret").await;
    let peer = QuicPeer::connect(&addr, "s3cret", pin).await.unwrap();
    assert_eq!(peer.name(), "quic");
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut replies = peer
        .forward(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap();
    // A prompt chunk's hidden states (several MiB) and decode-sized frames.
    for (id, bytes) in [(1u64, 64), (2, 6 << 20), (3, 1024)] {
        tx.send(frame(id, bytes)).await.unwrap();
        let reply = replies.next().await.unwrap().unwrap();
        assert_eq!(reply.batch_id, id * 2);
    }
    drop(tx);
    assert!(
        replies.next().await.is_none(),
        "the stream ends with its frames"
    );

    let mut line = peer.replies(41).await.unwrap();
    assert_eq!(line.next().await.unwrap().unwrap().batch_id, 41);
    assert!(line.next().await.is_none());
    let mut refused = peer.replies(0).await.unwrap();
    let err = refused.next().await.unwrap().unwrap_err();
    assert!(err.message().contains("QUIC"), "{err:?}");

    // A closed endpoint ends the connection.
    endpoint.close(0u32.into(), b"bye");
    endpoint.wait_idle().await;
    assert!(!peer.is_open());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_or_pin_is_refused_in_the_handshake() {
    let (addr, pin, _endpoint) = worker("s3cret").await;
    // TLS 1.3 checks the client's certificate after the client's side of
    // the handshake is done: the refusal shows on the first stream.
    if let Ok(peer) = QuicPeer::connect(&addr, "s3cres", pin).await {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(frame(1, 16)).await.unwrap();
        let got = match peer
            .forward(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Ok(mut replies) => replies.next().await,
            Err(e) => Some(Err(e)),
        };
        let err = got
            .expect("an error, not an end")
            .expect_err("no reply to a stranger");
        assert!(err.message().contains("certificate"), "{err:?}");
    }
    let other = NodeIdentity::generate().unwrap().fingerprint();
    let err = QuicPeer::connect(&addr, "s3cret", other)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("not the pinned"), "{err}");
}
