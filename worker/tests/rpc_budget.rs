//! A worker admits a slice exactly when the model crate's stage memory fits
//! its `--mem-budget`: the function the planner placed the slice by.

mod rpc_common;

use rpc_common::*;
use strata_model::arch::ModelSpec;
use strata_model::profile::KvType;
use strata_model::LayerRange;
use strata_proto::v1;
use strata_worker::service::frames::MAX_FRAME_TOKENS;
use strata_worker::slice_cache::{slice_memory, stage_load};
use tonic::Code;

/// What `rpc_common::load` asks for layers `first..end`: 512 positions, no
/// batch bound (the frame ceiling, at most the pool), one sequence.
fn need(first: u32, end: u32) -> u64 {
    let file = open_model();
    let spec = ModelSpec::from_gguf(&file).expect("spec");
    let load = stage_load(512, 512, MAX_FRAME_TOKENS, KvType::F16);
    assert_eq!(load.sequences, 1);
    let range = LayerRange {
        first: first as usize,
        end: end as usize,
    };
    let m = slice_memory(&file, &spec, range, &load);
    assert_eq!(m.total_bytes, m.weight_bytes + m.kv_bytes + m.scratch_bytes);
    assert!(m.kv_bytes > 0 && m.scratch_bytes > 0);
    m.total_bytes
}

async fn load_with_budget(budget: u64, first: u32, end: u32) -> Result<(), tonic::Status> {
    let dir = smollm_model_dir();
    let w = start_worker(Some(dir.path().to_path_buf()), Some(budget)).await;
    let mut c = client(&w.addr).await;
    load(&mut c, &digest(), first, end, "", v1::ActDtype::F16)
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slice_that_fits_by_stage_memory_loads_and_one_byte_less_is_refused() {
    // A middle slice, the first and the last (embedding, head + logits).
    for (first, end) in [(3, 9), (0, 4), (26, 30)] {
        let need = need(first, end);
        load_with_budget(need, first, end)
            .await
            .unwrap_or_else(|e| panic!("layers {first}..{end} in exactly {need} bytes: {e:?}"));
        let err = load_with_budget(need - 1, first, end).await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert!(
            err.message().contains(&format!("need {need} bytes")),
            "{}",
            err.message()
        );
    }
}
