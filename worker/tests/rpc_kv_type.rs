//! `LoadSlice.kv_type`: a worker loads a q8_0 / q4_0 KV cache of the size
//! the plan counts, and with q8_0 it samples llama.cpp's q8_0-KV tokens
//! (`llama-server -ctk q8_0 -ctv q8_0 -fa on`); an unknown type is refused.

mod rpc_common;

use rpc_common::*;
use strata_model::arch::ModelSpec;
use strata_model::profile::KvType;
use strata_model::LayerRange;
use strata_proto::v1;
use strata_worker::service::frames::MAX_FRAME_TOKENS;
use strata_worker::slice_cache::{slice_memory, stage_load};

fn request(kv_type: i32) -> v1::LoadSliceRequest {
    v1::LoadSliceRequest {
        model_digest: digest(),
        layers: Some(v1::LayerRange { first: 0, end: 30 }),
        ctx_tokens: 512,
        kv_type,
        act_dtype: v1::ActDtype::F32 as i32,
        max_seq_tokens: 512,
        ..Default::default()
    }
}

/// KV bytes the plan counts for the whole model in `kv`.
fn planned_kv_bytes(kv: KvType) -> u64 {
    let file = open_model();
    let spec = ModelSpec::from_gguf(&file).expect("spec");
    let load = stage_load(512, 512, MAX_FRAME_TOKENS, kv);
    slice_memory(&file, &spec, LayerRange { first: 0, end: 30 }, &load).kv_bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q8_0_kv_loads_its_planned_size_and_gives_llama_cpp_tokens() {
    let dir = smollm_model_dir();
    let w = start_worker(Some(dir.path().to_path_buf()), None).await;
    let mut c = client(&w.addr).await;
    let progress = load_request(&mut c, request(v1::KvType::Q80 as i32))
        .await
        .expect("load q8_0");
    let kv_bytes = progress.last().expect("progress").kv_bytes;
    assert_eq!(kv_bytes, planned_kv_bytes(KvType::Q8_0));
    assert!(
        kv_bytes < planned_kv_bytes(KvType::F16) * 6 / 10,
        "{kv_bytes}"
    );

    let r = reference_from("smollm2-135m-kv-q8_0.json");
    let mut data = DataStream::open(&mut c).await;
    let got = data.generate_greedy(1, &r.prompt_ids, 12).await;
    // Up to llama.cpp's first near-tie (the prompt goes in one batch).
    let sure = r
        .top2_gaps
        .iter()
        .position(|&g| g < 0.5)
        .unwrap_or(12)
        .min(12);
    assert!(
        sure >= 4,
        "too few sure tokens to compare: {:?}",
        r.top2_gaps
    );
    assert_eq!(
        got[..sure],
        r.tokens[..sure],
        "vs llama.cpp's q8_0-KV tokens"
    );

    // q4_0 loads too, at its own planned size.
    let progress = load_request(&mut c, request(v1::KvType::Q40 as i32))
        .await
        .expect("load q4_0");
    let kv_bytes = progress.last().expect("progress").kv_bytes;
    assert_eq!(kv_bytes, planned_kv_bytes(KvType::Q4_0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kv_type_is_refused() {
    let dir = smollm_model_dir();
    let w = start_worker(Some(dir.path().to_path_buf()), None).await;
    let mut c = client(&w.addr).await;
    let err = load_request(&mut c, request(7)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("kv_type"), "{err:?}");
}
