//! Hostile input from a token holder: a pushed slice whose metadata claims
//! absurd sizes must give a clear error on LoadSlice, and the worker must
//! keep serving.

mod rpc_common;

use rpc_common::*;
use strata_model::gguf::{GgufWriter, MetaValue};
use strata_proto::v1;
use tokio_stream::wrappers::ReceiverStream;

/// Model metadata (no tensors) for a llama with `block_count` layers.
fn metadata(block_count: u64) -> Vec<u8> {
    let mut w = GgufWriter::new();
    let kv: [(&str, MetaValue); 8] = [
        ("general.architecture", MetaValue::String("llama".into())),
        ("llama.block_count", MetaValue::U64(block_count)),
        ("llama.embedding_length", MetaValue::U32(64)),
        ("llama.attention.head_count", MetaValue::U32(4)),
        ("llama.feed_forward_length", MetaValue::U32(128)),
        ("llama.context_length", MetaValue::U32(256)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::F32(1e-5),
        ),
        ("llama.vocab_size", MetaValue::U32(32)),
    ];
    for (k, v) in kv {
        w.add_metadata(k, v);
    }
    w.to_bytes(|_, _, _| Ok(())).expect("metadata gguf")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_slice_claiming_2_pow_60_layers_is_refused_and_the_worker_lives() {
    let w = start_worker(None, None).await;
    let mut c = client(&w.addr).await;
    let digest = format!("sha256:{}", "f".repeat(64));
    let header = v1::SliceHeader {
        model_digest: digest.clone(),
        layers: Some(v1::LayerRange { first: 0, end: 1 }),
        metadata_gguf: metadata(1 << 60),
        tensors: Vec::new(),
        slice_hash: format!("blake3:{}", "0".repeat(64)),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(v1::SliceChunk {
        part: Some(v1::slice_chunk::Part::Header(header)),
    })
    .await
    .unwrap();
    drop(tx);
    // Checking what arrived reads its hyper-parameters: a clear refusal,
    // and nothing is kept to load.
    let err = c
        .push_slice(ReceiverStream::new(rx))
        .await
        .expect_err("a slice claiming 2^60 layers must be refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("block_count"), "{err:?}");
    let err = load(&mut c, &digest, 0, 1, "", v1::ActDtype::F32)
        .await
        .expect_err("nothing to load");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let h = c
        .health(v1::HealthRequest {})
        .await
        .expect("the worker still answers")
        .into_inner();
    assert_ne!(h.status, v1::health_reply::Status::Ready as i32);
}

fn entry(seq: u64, start: u32, n: u32) -> v1::BatchEntry {
    v1::BatchEntry {
        seq_id: seq,
        start_pos: start,
        n_tokens: n,
        sample: true,
        sampling: Some(strata_worker::service::frames::sampling_to_wire(
            &strata_worker::SamplingParams::greedy(),
        )),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_past_the_plan_or_lying_get_error_replies_and_change_nothing() {
    let dir = smollm_model_dir();
    let w = start_worker(Some(dir.path().to_path_buf()), None).await;
    let mut c = client(&w.addr).await;
    load_request(
        &mut c,
        v1::LoadSliceRequest {
            model_digest: digest(),
            layers: Some(v1::LayerRange { first: 0, end: 30 }),
            ctx_tokens: 512,
            kv_type: v1::KvType::F16 as i32,
            act_dtype: v1::ActDtype::F32 as i32,
            max_batch_tokens: 16,
            max_seq_tokens: 64,
            ..Default::default()
        },
    )
    .await
    .expect("load");
    let mut data = DataStream::open(&mut c).await;
    let cases: [(&str, Vec<v1::BatchEntry>, Vec<u32>, &str); 4] = [
        (
            "over the batch",
            vec![entry(1, 0, 17)],
            vec![1; 17],
            "the plan's batch",
        ),
        (
            "past the context",
            vec![entry(1, 0, 65)],
            vec![1; 65],
            "tokens",
        ),
        (
            "duplicate",
            vec![entry(1, 0, 1), entry(1, 1, 1)],
            vec![1; 2],
            "twice",
        ),
        (
            "lying count",
            vec![entry(1, 0, 4)],
            vec![1; 3],
            "token ids for",
        ),
    ];
    for (what, entries, ids, needle) in cases {
        let reply = data.step(entries, ids).await;
        assert!(reply.error.contains(needle), "{what}: {reply:?}");
        assert!(!reply.stage_lost, "{what}: the stage itself is fine");
    }
    let h = c.health(v1::HealthRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (h.live_sequences, h.kv_blocks_used),
        (0, 0),
        "refused frames took no KV"
    );
    // The worker keeps serving: a frame within the plan samples a token.
    let reply = data.step(vec![entry(1, 0, 4)], vec![1, 2, 3, 4]).await;
    assert!(reply.error.is_empty(), "{reply:?}");
    assert_eq!(reply.tokens.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_slice_reads_only_files_of_the_model_dir() {
    let dir = smollm_model_dir();
    let w = start_worker(Some(dir.path().to_path_buf()), None).await;
    let mut c = client(&w.addr).await;
    let request = |model_path: &str| v1::LoadSliceRequest {
        model_digest: digest(),
        layers: Some(v1::LayerRange { first: 0, end: 30 }),
        ctx_tokens: 64,
        kv_type: v1::KvType::F16 as i32,
        act_dtype: v1::ActDtype::F32 as i32,
        model_path: model_path.into(),
        ..Default::default()
    };
    // The same answer whether the path exists or not: nothing is learnt.
    for path in [
        "/etc/passwd",
        "/nonexistent/file.gguf",
        concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
        &format!("{}/../x.gguf", dir.path().display()),
    ] {
        let err = load_request(&mut c, request(path)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{path}: {err:?}");
        assert!(!err.message().contains(path), "{path}: {err:?}");
    }
    let h = c.health(v1::HealthRequest {}).await.unwrap().into_inner();
    assert_eq!(
        h.status,
        v1::health_reply::Status::Idle as i32,
        "nothing loaded"
    );
    // A file of the model dir, by its path there, loads.
    let inside = dir.path().join("smollm2.gguf");
    load_request(&mut c, request(inside.to_str().unwrap()))
        .await
        .expect("a model-dir file loads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_worker_connects_onward_only_to_a_pinned_next_stage() {
    let dir = smollm_model_dir();
    let w = start_worker(Some(dir.path().to_path_buf()), None).await;
    let mut c = client(&w.addr).await;
    for (next, want) in [
        ("127.0.0.1:9", "has no fingerprint"),
        ("127.0.0.1:9#sha256:abc", "not a fingerprint"),
    ] {
        let err = load(&mut c, &digest(), 0, 10, next, v1::ActDtype::F32)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(want), "{next}: {}", err.message());
        // Refused before anything was loaded.
        assert_eq!(
            w.service.snapshot().status,
            v1::health_reply::Status::Idle as i32
        );
    }
}
