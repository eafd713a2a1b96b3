//! Sessions on disk for models whose blocks alone cannot resume a prompt
//! (Qwen3.5's recurrent state, Gemma 4's sliding-window rings): the state
//! snapshot a prompt leaves at its last whole block is written beside the
//! blocks (`*.state`, one file per layer), and after `strata serve` and its
//! workers restart, the next turn resumes from both and gives the tokens
//! and log-probabilities of a server without any cache.

mod common;

use std::path::Path;

use common::conversation::{
    cache_files, cached_tokens, complete, completion_tokens, history, metric, snapshot_point,
    wait_cache_files,
};
use common::{Server, Worker};
use serde_json::Value;

/// Qwen3.5 over three workers (80 MiB each, a KV cache directory each):
/// stages of DeltaNet layers only write state files, the one with the
/// attention layer blocks too, and the pool joins what they list.
#[test]
fn a_recurrent_model_continues_from_its_snapshot_on_disk_after_a_restart() {
    let (_dir, path, _) = common::synth_reference("synth-qwen35-q8_0");
    let model_dir = path.parent().unwrap().to_path_buf();
    let kv: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let kv_paths: Vec<&Path> = kv.iter().map(|d| d.path()).collect();
    continue_after_restart(&path, &kv_paths, |listen| {
        common::kv_cache_pool(&path, &model_dir, "80MiB", &kv_paths, listen)
    });
}

/// Gemma 4 on three stages in one process (`--devices`, 79 MiB each fits
/// two layers), sharing `--kv-cache-dir` (each stage owns its layers'
/// folders; the stages' ports, and so their order in the pool, change
/// with the restart): its five sliding-window layers write their rings
/// (17 blocks each), its full-attention layers their blocks.
#[test]
fn a_sliding_window_model_continues_from_its_ring_on_disk_after_a_restart() {
    let (_dir, path, _) = common::synth_reference("synth-gemma4-q8_0");
    let kv = tempfile::tempdir().unwrap();
    let dir = kv.path().to_str().unwrap().to_string();
    continue_after_restart(&path, &[kv.path()], |_| {
        let args = [
            "-c",
            "2048",
            "-n",
            "1",
            "--devices",
            "cpu,cpu,cpu",
            "--mem-budget",
            "237MiB",
            "--kv-cache-dir",
            dir.as_str(),
        ];
        let server = Server::start(&path, &args);
        let (_, health) = common::get(&format!("{}/health", server.base));
        let stages = serde_json::from_str::<Value>(&health).unwrap()["stages"].clone();
        assert_eq!(stages.as_array().map(|s| s.len()), Some(3), "{health}");
        (Vec::new(), server)
    });
}

/// One turn on a pool `start` brings up (workers on fresh ports, or on
/// the addresses it had), then everything is stopped and started again,
/// and the next turn resumes from disk.
fn continue_after_restart(
    path: &Path,
    kv_dirs: &[&Path],
    start: impl Fn(Option<&[String]>) -> (Vec<Worker>, Server),
) {
    let cold = Server::start(path, &["-c", "2048", "-n", "1", "--no-prefix-cache"]);
    let (workers, server) = start(None);
    let prompt0 = history(1_200);
    let reply0 = complete(&server, &prompt0);
    let n0 = reply0["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(n0 > 300, "{n0} prompt tokens");
    // Blocks are written when the sequence ends, the snapshot at its cut.
    let states = wait_cache_files(kv_dirs, "state");
    let blocks = wait_cache_files(kv_dirs, "kv");
    eprintln!("saved: {states} state files, {blocks} block files");
    let addrs: Vec<String> = workers.iter().map(|w| w.addr.clone()).collect();
    drop(server);
    drop(workers);

    let (_workers, server) = start(Some(&addrs));
    let prompt1 = format!(
        "{prompt0}{}\n\nPart 2 of the text follows.\n",
        reply0["choices"][0]["text"].as_str().unwrap()
    );
    let reply1 = complete(&server, &prompt1);
    let n1 = reply1["usage"]["prompt_tokens"].as_u64().unwrap();
    let hit = cached_tokens(&reply1);
    let snapshot_at = snapshot_point(n0);
    snapshot_point(n1); // n1's batches leave it reusable.
    assert!(
        hit >= snapshot_at && hit < n1,
        "{hit} of {n1} tokens cached after the restart; the snapshot is at {snapshot_at}"
    );
    assert_eq!(metric(&server, "prompt_tokens_restored_total"), hit);
    assert_eq!(
        completion_tokens(&reply1),
        completion_tokens(&complete(&cold, &prompt1)),
        "restored vs cold"
    );
    // What was read back is still there (nothing was damaged).
    assert!(kv_dirs.iter().any(|d| !cache_files(d, "state").is_empty()));
}
