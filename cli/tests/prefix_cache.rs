//! The automatic prefix cache through `strata serve`: a conversation resent
//! turn by turn computes only its new tokens (`cached_tokens`), gives the
//! tokens a server without the cache gives, and the cache stays within the
//! KV pool, evicting its oldest blocks.

mod common;

use std::time::Duration;

use common::conversation::{cached_tokens, metric, settled_kept_blocks, tokens};
use common::{model, post, Server, Worker, SMOLLM2};
use serde_json::{json, Value};

fn chat(server: &Server, messages: &[Value]) -> Value {
    common::conversation::chat(server, messages, 16)
}

/// About 3,000 SmolLM2 tokens of text.
fn history() -> String {
    common::conversation::history(13_800)
}

/// Four turns over a 3,000-token history on each `cached` server: from the
/// second turn the prompt starts on the blocks the previous turn left (all
/// of its prompt's whole blocks), and every reply is the same on all of
/// them; the first cached turn and the last are also sent to `cold` (no
/// prefix cache, each a full prefill of 3,000 tokens), which gives the same
/// tokens and log-probabilities.
fn converse(cached: &[&Server], cold: &Server) {
    let mut messages = vec![json!({
        "role": "user",
        "content": format!("Here is a text.\n\n{}\n\nWhat is it about?", history()),
    })];
    let mut previous_prompt = 0u64;
    for turn in 0..4 {
        let replies: Vec<Value> = cached.iter().map(|s| chat(s, &messages)).collect();
        let warm = &replies[0];
        let prompt = warm["usage"]["prompt_tokens"].as_u64().unwrap();
        for (i, r) in replies.iter().enumerate() {
            let hit = cached_tokens(r);
            eprintln!("server {i}, turn {turn}: {prompt} prompt tokens, {hit} cached");
            assert_eq!(
                tokens(r),
                tokens(warm),
                "turn {turn}: server {i} vs server 0"
            );
            if turn == 0 {
                assert!(prompt > 2_900, "the history is {prompt} tokens");
                assert_eq!(hit, 0);
            } else {
                assert!(
                    hit >= previous_prompt / 32 * 32 && hit < prompt,
                    "turn {turn}: {hit} of {prompt} prompt tokens cached; the previous prompt had {previous_prompt}"
                );
            }
        }
        if turn == 1 || turn == 3 {
            let fresh = chat(cold, &messages);
            assert_eq!(cached_tokens(&fresh), 0, "the cold server caches nothing");
            assert_eq!(tokens(warm), tokens(&fresh), "turn {turn}: cached vs cold");
        }
        previous_prompt = prompt;
        let reply = warm["choices"][0]["message"]["content"].as_str().unwrap();
        messages.push(json!({"role": "assistant", "content": reply}));
        messages.push(json!({"role": "user", "content": format!("Say more, part {}.", turn + 2)}));
    }
}

/// One process and three workers (each stage keeps the same blocks: the
/// coordinator tells all of them what to keep and evict), against a cold
/// process.
#[test]
fn a_conversation_reuses_its_history_on_one_and_three_stages() {
    let path = model(SMOLLM2);
    let model_dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&path, model_dir.path().join(SMOLLM2)).unwrap();
    let workers = [
        Worker::start("160MiB", Some(model_dir.path())),
        Worker::start("155MiB", None),
        Worker::start("160MiB", None),
    ];
    let mut args = vec!["-c", "4096", "-n", "1"];
    for w in &workers {
        args.extend(["--worker", w.spec.as_str()]);
    }
    let pipeline = Server::start(&path, &args);
    let (status, health) = common::get(&format!("{}/health", pipeline.base));
    assert_eq!(status, 200);
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["stages"].as_array().unwrap().len(), 3, "{health}");
    let one = Server::start(&path, &["-c", "4096", "-n", "1"]);
    let cold = Server::start(&path, &["-c", "4096", "-n", "1", "--no-prefix-cache"]);
    converse(&[&one, &pipeline], &cold);
    // /metrics counts the cached prompt tokens of turns 1-3 and the kept blocks.
    let value = |name: &str| metric(&one, name);
    assert!(value("prompt_tokens_cached_total") > 3 * 3_000);
    assert!(value("prefix_cache_blocks") >= 3_000 / 32);
    assert!(settled_kept_blocks(&workers) > 0);
}

/// A 512-token pool (16 blocks) and prompts of about 200 tokens: the cache
/// keeps the latest, evicts the oldest when a new sequence needs room, and
/// holds nothing else once no sequence runs.
#[test]
fn the_cache_stays_within_the_pool_and_evicts_the_oldest() {
    let path = model(SMOLLM2);
    let model_dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&path, model_dir.path().join(SMOLLM2)).unwrap();
    let worker = Worker::start("400MiB", Some(model_dir.path()));
    let server = Server::start(
        &path,
        &["-c", "512", "-n", "1", "--worker", worker.spec.as_str()],
    );
    let text = history();
    let prompt = |i: usize| -> String { text.chars().skip(i * 1_000).take(800).collect() };
    let complete = |p: &str| -> Value {
        let (status, body) = post(
            &format!("{}/v1/completions", server.base),
            &json!({"prompt": p, "max_tokens": 8, "temperature": 0}),
        );
        assert_eq!(status, 200, "{body}");
        body
    };
    let pool = worker.health().kv_blocks_free;
    assert_eq!(pool, 16, "a 512-token pool");
    for i in 0..4 {
        let body = complete(&prompt(i));
        assert_eq!(cached_tokens(&body), 0, "prompt {i} is new");
        let h = worker.health();
        eprintln!("after prompt {i}: {h:?}");
        assert!(
            common::eventually(Duration::from_secs(10), || {
                let h = worker.health();
                h.live_sequences == 0 && h.kv_blocks_used == h.kv_blocks_cached
            }),
            "blocks held past their sequence: {:?}",
            worker.health()
        );
        let h = worker.health();
        assert!(
            h.kv_blocks_cached > 0 && h.kv_blocks_used + h.kv_blocks_free == pool,
            "{h:?}"
        );
    }
    // The latest prompt is still cached; the first was evicted for the others.
    assert!(cached_tokens(&complete(&prompt(3))) > 0);
    assert_eq!(cached_tokens(&complete(&prompt(0))), 0);
}
