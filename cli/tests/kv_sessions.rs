//! Sessions on disk: workers started with `--kv-cache-dir` write the KV
//! blocks they keep for the prefix cache, and after `strata serve` and the
//! workers are killed and started again (three workers, on other ports and
//! each with another one's directory: each is given the layers its
//! directory holds), a conversation continues from
//! those files (`cached_tokens`, the restored-tokens metric) with the tokens
//! a server without any cache gives. A damaged file is ignored with a log
//! line and the prompt is computed.

mod common;

use std::path::Path;
use std::time::Duration;

use common::conversation::{cache_files, cached_tokens, history, metric, tokens, wait_cache_files};
use common::{model, Server, SMOLLM2};
use serde_json::{json, Value};

/// About 1,000 SmolLM2 tokens of history, a short reply.
fn chat(server: &Server, messages: &[Value]) -> Value {
    common::conversation::chat(server, messages, 12)
}

/// Block files under a KV cache directory.
fn block_files(dir: &Path) -> Vec<std::path::PathBuf> {
    cache_files(dir, "kv")
}

/// Waits until the writer threads have saved the blocks.
fn wait_saved(dirs: &[&Path]) -> usize {
    wait_cache_files(dirs, "kv")
}

/// The first turn: the history and a question.
fn first_turn() -> Vec<Value> {
    vec![json!({
        "role": "user",
        "content": format!("Here is a text.\n\n{}\n\nWhat is it about?", history(4_500)),
    })]
}

/// The second turn: the first, the reply to it and another question.
fn second_turn(first_reply: &Value) -> Vec<Value> {
    let reply = first_reply["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    let mut messages = first_turn();
    messages.push(json!({"role": "assistant", "content": reply}));
    messages.push(json!({"role": "user", "content": "Say more."}));
    messages
}

/// `(address, first layer, end layer)` of each stage, from `/v1/pool`.
fn placement(server: &Server) -> Vec<(String, u64, u64)> {
    let (status, body) = common::get(&format!("{}/v1/pool", server.base));
    assert_eq!(status, 200, "{body}");
    let pool: Value = serde_json::from_str(&body).unwrap();
    pool["models"][0]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| {
            (
                st["addr"].as_str().unwrap().to_string(),
                st["first_layer"].as_u64().unwrap(),
                st["end_layer"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Three free loopback addresses, their ports in rising order (all of five
/// digits, so the addresses sort as the ports do).
fn rising_ports() -> Vec<String> {
    loop {
        let held: Vec<std::net::TcpListener> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut ports: Vec<u16> = held
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        ports.sort_unstable();
        if ports.iter().all(|&p| p >= 10_000) {
            return ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        }
    }
}

/// Each worker's budget: SmolLM2 with 2,048 tokens of KV needs all three.
const BUDGET: &str = "150MiB";

/// Three workers of one machine, each with its own KV cache directory (a
/// worker reads only its own disk). They come back on other ports, each
/// with the directory another one had; they report the layers they keep
/// on disk (`Capabilities.saved_layers`), and the planner gives each the
/// layers its directory holds, so every stage finds its blocks.
#[test]
fn a_conversation_continues_from_disk_after_serve_and_its_workers_restart() {
    let path = model(SMOLLM2);
    let model_dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&path, model_dir.path().join(SMOLLM2)).unwrap();
    let kv: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let kv_paths: Vec<&Path> = kv.iter().map(|d| d.path()).collect();
    // Each start on three new ports, in rising order: among equal plans the
    // planner's order is the addresses', so without what the workers saved
    // the second start would give directory 2's worker the first layers.
    let start = |dirs: &[&Path]| {
        let ports = rising_ports();
        common::kv_cache_pool(&path, model_dir.path(), BUDGET, dirs, Some(&ports))
    };
    let cold = Server::start(&path, &["-c", "2048", "-n", "1", "--no-prefix-cache"]);

    let (workers, server) = start(&kv_paths);
    let before = placement(&server);
    assert_eq!(before.len(), 3, "three stages: {before:?}");
    let reply0 = chat(&server, &first_turn());
    let prompt0 = reply0["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt0 > 900, "the history is {prompt0} tokens");
    let saved = wait_saved(&kv_paths);
    // Each kept block, for each of the 30 layers.
    assert_eq!(saved % 30, 0, "{saved} block files over 30 layers");
    assert!(saved / 30 >= prompt0 as usize / 32, "{saved} files");
    // The layers each directory's worker held.
    let layers_of = |workers: &[common::Worker], placed: &[(String, u64, u64)], dir: usize| {
        placed
            .iter()
            .find(|(addr, ..)| addr == &workers[dir].addr)
            .map(|&(_, a, b)| (a, b))
    };
    let held: Vec<_> = (0..3).map(|d| layers_of(&workers, &before, d)).collect();
    drop(server);
    drop(workers);

    // New ports, and directory d now belongs to worker 2 - d.
    let reversed: Vec<&Path> = kv_paths.iter().rev().copied().collect();
    let (workers, mut server) = start(&reversed);
    // The listing may come before "serving on", which `start` waited for.
    const LISTED: &str = "the stages hold prefix blocks on disk";
    let seen = server
        .proc
        .log
        .iter()
        .find_map(|l| l.find(LISTED).map(|i| l[i + LISTED.len()..].to_string()));
    let listed = seen.unwrap_or_else(|| server.proc.wait_for(LISTED, Duration::from_secs(30)));
    let after = placement(&server);
    for d in 0..3 {
        assert_eq!(
            layers_of(&workers, &after, 2 - d),
            held[d],
            "directory {d}'s layers after the restart: {before:?} then {after:?}"
        );
    }
    assert!(!listed.contains("blocks=0"), "after the restart: {listed}");
    let second = second_turn(&reply0);
    let reply1 = chat(&server, &second);
    let hit = cached_tokens(&reply1);
    assert!(
        hit >= prompt0 / 32 * 32,
        "{hit} cached tokens after the restart; the first prompt had {prompt0}"
    );
    assert_eq!(metric(&server, "prompt_tokens_restored_total"), hit);
    let fresh = chat(&cold, &second);
    assert_eq!(
        tokens(&reply1),
        tokens(&fresh),
        "restored from disk vs cold"
    );
}

#[test]
fn a_damaged_block_file_is_ignored_and_the_prompt_computed() {
    let path = model(SMOLLM2);
    let kv = tempfile::tempdir().unwrap();
    let dir = kv.path().to_str().unwrap();
    let args = ["-c", "2048", "-n", "1", "--kv-cache-dir", dir];
    let server = Server::start(&path, &args);
    let reply0 = chat(&server, &first_turn());
    wait_saved(&[kv.path()]);
    drop(server);
    // Flip the last byte of every block of layer 7.
    let damaged: Vec<_> = block_files(kv.path())
        .into_iter()
        .filter(|p| p.parent().unwrap().ends_with("7"))
        .collect();
    assert!(!damaged.is_empty(), "layer 7's blocks were saved");
    let mut damaged_last = std::collections::HashMap::new();
    for f in &damaged {
        let mut bytes = std::fs::read(f).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        damaged_last.insert(f.clone(), bytes[last]);
        std::fs::write(f, &bytes).unwrap();
    }

    let mut server = Server::start(&path, &args);
    let second = second_turn(&reply0);
    let reply1 = chat(&server, &second);
    assert_eq!(cached_tokens(&reply1), 0, "nothing restored");
    server
        .proc
        .wait_for("ignoring KV cache file", Duration::from_secs(10));
    // The blocks computed again are saved again, whole.
    wait_saved(&[kv.path()]);
    let cold = Server::start(&path, &["-c", "2048", "-n", "1", "--no-prefix-cache"]);
    let fresh = chat(&cold, &second);
    assert_eq!(
        tokens(&reply1),
        tokens(&fresh),
        "after a damaged file vs cold"
    );
    assert!(
        damaged
            .iter()
            .any(|f| std::fs::read(f).is_ok_and(|b| b[b.len() - 1] != damaged_last[f])),
        "the damaged files read are replaced"
    );
}
