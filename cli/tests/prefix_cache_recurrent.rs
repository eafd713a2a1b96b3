//! The prefix cache of a recurrent model (Qwen3.5: three of four layers a
//! gated DeltaNet) through `strata serve`: a conversation resent turn by
//! turn resumes from the state snapshot its previous prompt left at its
//! last whole block, computes only what follows, and gives the tokens and
//! log-probabilities a server without the cache gives, on one process and
//! on three workers.

mod common;

use std::time::Duration;

use common::conversation::{cached_tokens, history};
use common::{post, Server, Worker};
use serde_json::{json, Value};

fn complete(server: &Server, prompt: &str) -> Value {
    let (status, body) = post(
        &format!("{}/v1/completions", server.base),
        &json!({"prompt": prompt, "max_tokens": 12, "temperature": 0, "logprobs": 1}),
    );
    assert_eq!(status, 200, "{body}");
    body
}

/// The reply's tokens and log-probabilities, to compare bit for bit.
fn tokens(body: &Value) -> (Value, Value) {
    let lp = &body["choices"][0]["logprobs"];
    (lp["tokens"].clone(), lp["token_logprobs"].clone())
}

#[test]
fn a_recurrent_model_resumes_each_turn_from_its_state_snapshot() {
    let (_dir, path, _) = common::synth_reference("synth-qwen35-q8_0");
    let model_dir = path.parent().unwrap();
    // Budgets that fit one or two layers each (as serve_pipeline.rs's
    // Qwen3.5 test), so the planner needs all three.
    let workers = [
        Worker::start("79MiB", Some(model_dir)),
        Worker::start("78MiB", None),
        Worker::start("78MiB", None),
    ];
    let mut args = vec!["-c", "2048", "-n", "1"];
    for w in &workers {
        args.extend(["--worker", w.spec.as_str()]);
    }
    let pipeline = Server::start(&path, &args);
    let (_, health) = common::get(&format!("{}/health", pipeline.base));
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["stages"].as_array().unwrap().len(), 3, "{health}");
    let one = Server::start(&path, &["-c", "2048", "-n", "1"]);
    let cold = Server::start(&path, &["-c", "2048", "-n", "1", "--no-prefix-cache"]);

    let mut prompt = history(1_200);
    let mut snapshot_at = 0u64;
    for turn in 0..4 {
        let replies: Vec<Value> = [&one, &pipeline]
            .iter()
            .map(|s| complete(s, &prompt))
            .collect();
        let fresh = complete(&cold, &prompt);
        let n = fresh["usage"]["prompt_tokens"].as_u64().unwrap();
        assert_eq!(cached_tokens(&fresh), 0, "the cold server caches nothing");
        for (i, r) in replies.iter().enumerate() {
            let hit = cached_tokens(r);
            eprintln!("server {i}, turn {turn}: {n} prompt tokens, {hit} cached");
            assert_eq!(tokens(r), tokens(&fresh), "turn {turn}: server {i} vs cold");
            if turn == 0 {
                assert!(n > 300 && hit == 0, "{n} tokens, {hit} cached");
            } else {
                // The previous prompt's last whole block before its last
                // token: where its snapshot was saved.
                assert!(
                    hit >= snapshot_at && hit < n,
                    "turn {turn}: {hit} of {n} cached; the snapshot is at {snapshot_at}"
                );
            }
        }
        snapshot_at = (n - 1) / 32 * 32;
        prompt.push_str(replies[0]["choices"][0]["text"].as_str().unwrap());
        prompt.push_str(&format!("\n\nPart {} of the text follows.\n", turn + 2));
    }
    // Every stage holds the same kept blocks, and no live sequence.
    for w in &workers {
        assert!(
            common::eventually(Duration::from_secs(10), || {
                let h = w.health();
                h.live_sequences == 0 && h.kv_blocks_used == h.kv_blocks_cached
            }),
            "{}: {:?}",
            w.addr,
            w.health()
        );
    }
    let kept: Vec<u64> = workers
        .iter()
        .map(|w| w.health().kv_blocks_cached)
        .collect();
    assert!(
        kept[0] > 0 && kept.iter().all(|&k| k == kept[0]),
        "{kept:?}"
    );
}
