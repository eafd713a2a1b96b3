//! A long conversation through the chat API, for the prefix cache and
//! sessions on disk: the history text, a greedy turn with log-probs, and
//! what the reply and `/metrics` say.

use serde_json::{json, Value};

use std::time::Duration;

use super::{get, post, Server, Worker};

/// The first `chars` characters of the GPL text (13,800 are about 3,000
/// SmolLM2 tokens).
pub fn history(chars: usize) -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/data/gpl-3.txt"
    ))
    .unwrap();
    text.chars().take(chars).collect()
}

/// A greedy reply of at most `max_tokens`, with log-probabilities.
pub fn chat(server: &Server, messages: &[Value], max_tokens: u32) -> Value {
    let (status, body) = post(
        &format!("{}/v1/chat/completions", server.base),
        &json!({"messages": messages, "max_tokens": max_tokens, "temperature": 0, "logprobs": true}),
    );
    assert_eq!(status, 200, "{body}");
    body
}

/// A greedy completion of `prompt` (12 tokens), with log-probabilities.
pub fn complete(server: &Server, prompt: &str) -> Value {
    let (status, body) = post(
        &format!("{}/v1/completions", server.base),
        &json!({"prompt": prompt, "max_tokens": 12, "temperature": 0, "logprobs": 1}),
    );
    assert_eq!(status, 200, "{body}");
    body
}

/// A completion's tokens and log-probabilities, to compare bit for bit.
pub fn completion_tokens(body: &Value) -> (Value, Value) {
    let lp = &body["choices"][0]["logprobs"];
    (lp["tokens"].clone(), lp["token_logprobs"].clone())
}

pub fn cached_tokens(body: &Value) -> u64 {
    body["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or_else(|| panic!("no cached_tokens in {body}"))
}

/// The reply's tokens and their log-probabilities, to compare bit for bit.
pub fn tokens(body: &Value) -> Vec<(String, f64)> {
    body["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["token"].as_str().unwrap().to_string(),
                t["logprob"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// `strata_<name>` from the server's `/metrics`.
pub fn metric(server: &Server, name: &str) -> u64 {
    let (_, metrics) = get(&format!("{}/metrics", server.base));
    let line = metrics
        .lines()
        .find(|l| l.starts_with(&format!("strata_{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {metrics}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Once no sequence runs, each worker holds only kept blocks, and all hold
/// the same number (the coordinator tells every stage what to keep and
/// evict): returns it.
pub fn settled_kept_blocks(workers: &[Worker]) -> u64 {
    for w in workers {
        assert!(
            super::eventually(Duration::from_secs(10), || {
                let h = w.health();
                h.live_sequences == 0 && h.kv_blocks_used == h.kv_blocks_cached
            }),
            "{}: only kept blocks stay: {:?}",
            w.addr,
            w.health()
        );
    }
    let kept: Vec<u64> = workers
        .iter()
        .map(|w| w.health().kv_blocks_cached)
        .collect();
    assert!(
        kept.iter().all(|&k| k == kept[0]),
        "every stage keeps the same blocks: {kept:?}"
    );
    kept[0]
}

/// Files named `*.{ext}` under a KV cache directory (`kv`: blocks,
/// `state`: state snapshots).
pub fn cache_files(dir: &std::path::Path, ext: &str) -> Vec<std::path::PathBuf> {
    fn walk(d: &std::path::Path, ext: &str, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, ext, out);
            } else if p.extension().is_some_and(|x| x == ext) {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, ext, &mut out);
    out.sort();
    out
}

/// Waits until the writer threads have saved the `*.{ext}` files (their
/// count stops growing and is above zero); returns it.
pub fn wait_cache_files(dirs: &[&std::path::Path], ext: &str) -> usize {
    let count = || {
        dirs.iter()
            .map(|d| cache_files(d, ext).len())
            .sum::<usize>()
    };
    let mut last = 0;
    assert!(
        super::eventually(Duration::from_secs(30), || {
            std::thread::sleep(Duration::from_millis(300));
            let now = count();
            let settled = now > 0 && now == last;
            last = now;
            settled
        }),
        "no *.{ext} files saved under {dirs:?}"
    );
    last
}

/// Where an `n`-token prompt of a model with recurrent or sliding-window
/// layers saves its state snapshot (f16 KV): its last whole block before
/// its last 4 tokens, which llama-server computes as a batch of their own,
/// under 64 rows, so not in ggml's tiled order that a longer prompt gives
/// them (docs/numerics.md, "Flash attention's tiled path"). Panics for a
/// prompt whose checkpoint batch (ending 516 tokens before its end) leaves
/// a ubatch of under 64 rows, which moves the point and stops a shorter
/// prompt's reuse there: the tests' prompts avoid those lengths.
pub fn snapshot_point(n: u64) -> u64 {
    let short = n.saturating_sub(516) % 512;
    assert!(
        n <= 516 || !(1..64).contains(&short),
        "a {n}-token prompt's checkpoint batch leaves a ubatch of {short} rows"
    );
    (n - 4) / 32 * 32
}
