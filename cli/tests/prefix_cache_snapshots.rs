//! The prefix cache of models whose blocks alone cannot resume a prompt,
//! through `strata serve`: Qwen3.5 (three of four layers a gated DeltaNet,
//! with recurrent state) and Gemma 4 (sliding-window layers, each sequence
//! a ring of its last positions). A conversation resent turn by turn
//! resumes from the state snapshot its previous prompt left at its last
//! whole block before its last 4 tokens (`common::conversation::
//! snapshot_point`), computes only what follows, and gives the tokens and
//! log-probabilities a server without the cache gives, on one process and
//! on three workers.

mod common;

use common::conversation::{
    cached_tokens, complete, completion_tokens, history, settled_kept_blocks, snapshot_point,
};
use common::{Server, Worker};
use serde_json::Value;

/// Qwen3.5: each stage's DeltaNet layers resume from a copy of their
/// recurrent state rows.
#[test]
fn a_recurrent_model_resumes_each_turn_from_its_state_snapshot() {
    let stages = converse("synth-qwen35-q8_0");
    // One stage ends with DeltaNet layer 2, the next starts with attention
    // layer 3: the hidden state crosses from one kind to the other.
    assert!(
        stages.iter().any(|s| s.ends_with("layers 3..4")),
        "no stage boundary between DeltaNet layer 2 and attention layer 3: {stages:?}"
    );
}

/// Gemma 4: its five sliding-window layers (a window of 16) keep a ring of
/// 17 blocks per sequence, beside 2,048-token pools; a resumed prompt
/// attends over a copy of the ring its snapshot saved.
#[test]
fn a_sliding_window_model_resumes_each_turn_from_its_ring_snapshot() {
    converse("synth-gemma4-q8_0");
}

/// Four turns of a conversation, each after an unrelated prompt of 700
/// tokens (which leaves its own state in the slot and ring the turn takes
/// next, so only the snapshot gives the turn its state), on a process and
/// on three workers (80 MiB each: one or two layers), against a cold
/// process.
fn converse(name: &str) -> Vec<String> {
    let (_dir, path, _) = common::synth_reference(name);
    let model_dir = path.parent().unwrap();
    let workers = [
        Worker::start("80MiB", Some(model_dir)),
        Worker::start("80MiB", None),
        Worker::start("80MiB", None),
    ];
    let mut args = vec!["-c", "2048", "-n", "2"];
    for w in &workers {
        args.extend(["--worker", w.spec.as_str()]);
    }
    let pipeline = Server::start(&path, &args);
    let (_, health) = common::get(&format!("{}/health", pipeline.base));
    let health: Value = serde_json::from_str(&health).unwrap();
    let stages: Vec<String> = health["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert_eq!(stages.len(), 3, "{health}");
    let one = Server::start(&path, &["-c", "2048", "-n", "2"]);
    let cold = Server::start(&path, &["-c", "2048", "-n", "1", "--no-prefix-cache"]);

    let mut prompt = history(1_200);
    let mut snapshot_at = 0u64;
    let text = history(8_000);
    for turn in 0..4 {
        let other: String = text.chars().skip(3_000 + 500 * turn).take(700).collect();
        for s in [&one, &pipeline] {
            complete(s, &other);
        }
        let replies: Vec<Value> = [&one, &pipeline]
            .iter()
            .map(|s| complete(s, &prompt))
            .collect();
        let fresh = complete(&cold, &prompt);
        let n = fresh["usage"]["prompt_tokens"].as_u64().unwrap();
        let next_snapshot_at = snapshot_point(n);
        assert_eq!(cached_tokens(&fresh), 0, "the cold server caches nothing");
        for (i, r) in replies.iter().enumerate() {
            let hit = cached_tokens(r);
            eprintln!("server {i}, turn {turn}: {n} prompt tokens, {hit} cached");
            assert_eq!(
                completion_tokens(r),
                completion_tokens(&fresh),
                "turn {turn}: server {i} vs cold"
            );
            if turn == 0 {
                assert!(n > 300 && hit == 0, "{n} tokens, {hit} cached");
            } else {
                // Where the previous prompt's snapshot was saved.
                assert!(
                    hit >= snapshot_at && hit < n,
                    "turn {turn}: {hit} of {n} cached; the snapshot is at {snapshot_at}"
                );
            }
        }
        snapshot_at = next_snapshot_at;
        prompt.push_str(replies[0]["choices"][0]["text"].as_str().unwrap());
        prompt.push_str(&format!("\n\nPart {} of the text follows.\n", turn + 2));
    }
    assert!(settled_kept_blocks(&workers) > 0);
    stages
}
