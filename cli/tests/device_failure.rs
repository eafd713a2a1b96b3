//! A worker whose GPU fails mid-request: the request ends with an error that
//! says so, the worker's Health turns FAILED (it used to keep saying READY
//! while its compute thread was dead) and `/health` names it. The GPU is the
//! CUDA emulator (the kernels on the CPU) told to fail after N launches.

mod common;

use std::path::Path;

use common::{post, EventStream, Server, Worker};
use serde_json::json;
use strata_proto::v1::health_reply::Status;

fn synth_model(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("tiny.gguf");
    common::synth(
        &[
            "--arch", "llama", "--preset", "tiny", "--quant", "Q8_0", "--layers", "2",
        ],
        &path,
    );
    path
}

#[test]
fn a_gpu_that_fails_mid_request_fails_the_request_and_health_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let model = synth_model(dir.path());
    // A two-layer step is a few dozen launches: the first request's handful
    // of tokens fit in 1500, a long one does not.
    let worker = Worker::start_with_env(
        "1GiB",
        None,
        &[
            ("STRATA_CUDA_EMULATOR", "1"),
            ("STRATA_CUDA_EMU_FAIL_AFTER", "1500"),
        ],
    );
    let server = Server::start(&model, &["-c", "512", "-n", "1", "--worker", &worker.spec]);
    assert_eq!(worker.health().status, Status::Ready as i32);
    assert!(
        worker
            .proc
            .log
            .iter()
            .any(|l| l.contains("strata CUDA emulator")),
        "the worker runs on the emulated GPU: {:?}",
        worker.proc.log
    );

    let (status, body) = post(
        &format!("{}/v1/completions", server.base),
        &json!({"prompt": "Hello", "max_tokens": 4, "temperature": 0}),
    );
    assert_eq!(status, 200, "before the failure: {body}");

    let mut stream = EventStream::open(
        &format!("{}/v1/completions", server.base),
        &json!({"prompt": "Once upon a time", "max_tokens": 400, "temperature": 0, "stream": true, "ignore_eos": true}),
    );
    let error = common::stream_error(&mut stream).expect("an error event before the stream ended");
    assert!(
        error.contains("device"),
        "the error says the device failed: {error}"
    );

    // The worker lives on and says what happened.
    let h = worker.health();
    assert_eq!(h.status, Status::Failed as i32, "{h:?}");
    assert!(
        h.message.contains("the compute device failed"),
        "{}",
        h.message
    );
    assert!(
        common::health_names(&server, &worker.addr),
        "/health should name the worker whose device failed"
    );
}
