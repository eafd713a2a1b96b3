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
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(v1::SliceChunk {
        part: Some(v1::slice_chunk::Part::Header(header)),
    })
    .await
    .unwrap();
    drop(tx);
    // The push itself may be accepted (it is only metadata) or refused; either
    // way, loading it must be a clear error.
    let pushed = c.push_slice(ReceiverStream::new(rx)).await;
    eprintln!("push: {pushed:?}");
    let err = load(&mut c, &digest, 0, 1, "", v1::ActDtype::F32)
        .await
        .expect_err("a slice claiming 2^60 layers must not load");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("block_count"), "{err:?}");
    let h = c
        .health(v1::HealthRequest {})
        .await
        .expect("the worker still answers")
        .into_inner();
    assert_ne!(h.status, v1::health_reply::Status::Ready as i32);
}
