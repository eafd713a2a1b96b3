//! What a token holder can do to a worker's slice cache, and what it cannot:
//! a push whose bytes do not match its slice hash is refused; a slice cached
//! under the real digest with other contents is dropped when the
//! coordinator's hash does not match, and pushed again; concurrent pushes of
//! one slice leave one good file.

mod rpc_common;

use std::sync::Arc;

use rpc_common::*;
use strata_coordinator::cluster::push_slice;
use strata_proto::v1;
use strata_worker::LayerRange;

const RANGE: LayerRange = LayerRange { first: 7, end: 20 };

/// A copy of the test model with one byte of layer 10's data changed.
fn altered_model(dir: &std::path::Path) -> Arc<strata_model::GgufFile> {
    let model = open_model();
    let data = model.tensor_data(model.tensor("blk.10.ffn_down.weight").expect("tensor"));
    let mut bytes = std::fs::read(model_path()).unwrap();
    let pos = bytes
        .windows(64)
        .position(|w| w == &data[..64])
        .expect("the tensor's bytes in the file");
    bytes[pos + 100] ^= 0x55;
    let path = dir.join("altered.gguf");
    std::fs::write(&path, bytes).unwrap();
    Arc::new(strata_model::GgufFile::open(&path).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_that_does_not_match_its_hash_is_refused() {
    let w = start_worker(None, None).await;
    let mut c = client(&w.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let altered = altered_model(dir.path());
    // The real slice's hash, other bytes.
    let err = push_slice(&mut c, altered, &digest(), RANGE, &slice_hash(7, 20))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("hashes to"), "{}", err.message());
    // Nothing was kept.
    let err = load(&mut c, &digest(), 7, 20, "", v1::ActDtype::F32)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let left: Vec<_> = std::fs::read_dir(w._dirs[0].path())
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_cache_entry_is_dropped_and_pushed_again() {
    let w = start_worker(None, None).await;
    let mut c = client(&w.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let altered = altered_model(dir.path());
    // A token holder pushes other contents under the real digest, with a
    // hash that matches them: the worker keeps it...
    let n_layers = strata_model::arch::ModelSpec::from_gguf(&altered)
        .unwrap()
        .n_layers;
    let poison_hash = strata_model::slice_hash::slice_hash(&altered, RANGE, n_layers);
    assert_ne!(poison_hash, slice_hash(7, 20));
    push_slice(&mut c, altered, &digest(), RANGE, &poison_hash)
        .await
        .expect("a self-consistent push is kept");
    // ...but the coordinator's load, with the real hash, does not use it.
    let err = load(&mut c, &digest(), 7, 20, "", v1::ActDtype::F32)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(
        err.message().contains("push the slice"),
        "{}",
        err.message()
    );
    // The coordinator pushes the real slice, and it loads.
    push_slice(&mut c, open_model(), &digest(), RANGE, &slice_hash(7, 20))
        .await
        .expect("push");
    load(&mut c, &digest(), 7, 20, "", v1::ActDtype::F32)
        .await
        .expect("loads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pushes_of_one_slice_leave_one_good_file() {
    let w = start_worker(None, None).await;
    let hash = slice_hash(7, 20);
    let pushes = (0..3).map(|_| {
        let (addr, hash) = (w.addr.clone(), hash.clone());
        tokio::spawn(async move {
            let mut c = client(&addr).await;
            push_slice(&mut c, open_model(), &digest(), RANGE, &hash).await
        })
    });
    for p in pushes.collect::<Vec<_>>() {
        p.await.unwrap().expect("each push succeeds");
    }
    let files: Vec<_> = std::fs::read_dir(w._dirs[0].path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), 1, "one slice file, no partial ones: {files:?}");
    let mut c = client(&w.addr).await;
    load(&mut c, &digest(), 7, 20, "", v1::ActDtype::F32)
        .await
        .expect("the cached slice checks out and loads");
}
