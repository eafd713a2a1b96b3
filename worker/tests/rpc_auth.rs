//! Every worker RPC refuses a wrong or missing cluster token.

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
            c.release(v1::ReleaseRequest { seq_ids: vec![1] })
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_token_is_refused_on_every_rpc() {
    let w = start_worker(None, None).await;

    let mut wrong = strata_proto::connect(&w.addr, "not-the-token")
        .await
        .unwrap();
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
