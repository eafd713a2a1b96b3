//! Who gets to call a worker: TLS with a pinned certificate and the
//! cluster's client certificate, and the token on every RPC.

mod rpc_common;

use rpc_common::*;
use strata_proto::v1;
use strata_proto::v1::worker_client::WorkerClient as RawClient;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// Calls every RPC once; returns (name, code) of each.
async fn call_all<T>(c: &mut RawClient<T>) -> Vec<(&'static str, Code)>
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let code = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
    let mut out = Vec::new();
    out.push((
        "Capabilities",
        code(c.capabilities(v1::CapabilitiesRequest {}).await.map(drop)),
    ));
    out.push((
        "Health",
        code(c.health(v1::HealthRequest {}).await.map(drop)),
    ));
    out.push((
        "Unload",
        code(c.unload(v1::UnloadRequest {}).await.map(drop)),
    ));
    out.push((
        "Release",
        code(
            c.release(v1::ReleaseRequest {
                seq_ids: vec![1],
                ..Default::default()
            })
            .await
            .map(drop),
        ),
    ));
    let load = v1::LoadSliceRequest {
        model_digest: "sha256:00".into(),
        layers: Some(v1::LayerRange { first: 0, end: 1 }),
        ctx_tokens: 16,
        ..Default::default()
    };
    out.push(("LoadSlice", code(c.load_slice(load).await.map(drop))));
    out.push((
        "Echo",
        code(c.echo(v1::EchoRequest::default()).await.map(drop)),
    ));
    // A worker told to dial out must know who asks.
    out.push((
        "MeasureLinks",
        code(
            c.measure_links(v1::MeasureLinksRequest {
                peers: vec!["127.0.0.1:9".into()],
            })
            .await
            .map(drop),
        ),
    ));
    let (_tx, rx) = tokio::sync::mpsc::channel::<v1::SliceChunk>(1);
    out.push((
        "PushSlice",
        code(c.push_slice(ReceiverStream::new(rx)).await.map(drop)),
    ));
    let (_tx, rx) = tokio::sync::mpsc::channel::<v1::BatchFrame>(1);
    out.push((
        "Forward",
        code(c.forward(ReceiverStream::new(rx)).await.map(drop)),
    ));
    out
}

/// Codes of every RPC through a client the worker refused at the TLS
/// handshake (when connecting did not already fail).
async fn refused_codes(spec: &str, token: &str) -> Result<Vec<(&'static str, Code)>, String> {
    match connect(spec, token).await {
        Err(e) => Err(e.to_string()),
        Ok(mut c) => Ok(call_all(&mut c).await),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_worker_refuses_other_clusters_and_clients_refuse_the_wrong_worker() {
    let w = start_worker(None, None).await;
    let (addr, pin) = strata_proto::parse_peer(&w.addr).unwrap();
    assert!(pin.is_some());

    // Another cluster's token: its client certificate is refused during the
    // handshake, so no RPC reaches the service, not even the token check.
    match refused_codes(&w.addr, "not-the-token").await {
        Err(e) => assert!(!e.is_empty()),
        Ok(codes) => {
            for (rpc, code) in codes {
                assert!(
                    code != Code::Ok && code != Code::Unauthenticated,
                    "{rpc} with another cluster's certificate got {code:?}"
                );
            }
        }
    }

    // A plaintext HTTP/2 client gets no service either.
    if let Ok(mut plain) = RawClient::connect(format!("http://{addr}")).await {
        for (rpc, code) in call_all(&mut plain).await {
            assert!(
                code != Code::Ok && code != Code::Unauthenticated,
                "{rpc} in plaintext got {code:?}"
            );
        }
    }

    // The right token, but a pin for some other certificate: the client
    // refuses the worker before sending anything.
    let other = strata_proto::NodeIdentity::generate()
        .unwrap()
        .fingerprint();
    let Err(err) = connect(&format!("{addr}#{other}"), TOKEN).await else {
        panic!("a client with the wrong pin connected");
    };
    assert!(
        err.to_string().contains(&format!("not the pinned {other}")),
        "{err}"
    );

    // Nothing any of them sent was acted on, and the right pin and token work.
    assert_eq!(
        w.service.snapshot().status,
        v1::health_reply::Status::Idle as i32
    );
    let mut ok = client(&w.addr).await;
    let health = ok.health(v1::HealthRequest {}).await.unwrap().into_inner();
    assert_eq!(health.status, v1::health_reply::Status::Idle as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insecure_worker_refuses_a_wrong_or_missing_token_on_every_rpc() {
    let w = start_worker_with(None, None, None).await;
    assert!(!w.addr.contains('#'));

    let mut wrong = connect(&w.addr, "not-the-token").await.unwrap();
    for (rpc, code) in call_all(&mut wrong).await {
        assert_eq!(code, Code::Unauthenticated, "{rpc} with a wrong token");
    }

    let mut missing = RawClient::connect(format!("http://{}", w.addr))
        .await
        .unwrap();
    for (rpc, code) in call_all(&mut missing).await {
        assert_eq!(code, Code::Unauthenticated, "{rpc} without a token");
    }

    // The right token gets through (Capabilities answers; nothing loaded).
    let mut ok = client(&w.addr).await;
    let caps = ok
        .capabilities(v1::CapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(caps.backend, "cpu");
    assert!(caps.matvec_bytes_per_second > 0.0);
    let health = ok.health(v1::HealthRequest {}).await.unwrap().into_inner();
    assert_eq!(health.status, v1::health_reply::Status::Idle as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_budget_caps_capabilities_and_refuses_a_slice_that_does_not_fit() {
    let dir = smollm_model_dir();
    let w = start_worker(Some(dir.path().to_path_buf()), Some(8 << 20)).await;
    let mut c = client(&w.addr).await;
    let caps = c
        .capabilities(v1::CapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(caps.free_memory_bytes, 8 << 20);
    assert_eq!(caps.model_digests, vec![digest()]);
    let err = load(&mut c, &digest(), 0, 30, "", v1::ActDtype::F16)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("--mem-budget"), "{}", err.message());
}
