//! The web page at `/`, driven in headless Chromium (chromedriver) against
//! `strata serve` over two real worker processes on loopback: it asks for
//! the API key, lists the model, shows each worker's layers, and streams a
//! chat reply that is the API's own greedy answer. A screenshot is kept in
//! `target/test-artifacts/web-page.png` (or `$STRATA_TEST_ARTIFACTS`).

mod common;
mod webdriver;

use std::time::Duration;

use common::{model, post_with, Server, Worker, SMOLLM2};
use serde_json::{json, Value};
use webdriver::{artifact_dir, Browser};

const API_KEY: &str = "web-page-key";
const PROMPT: &str = "What is the capital of France?";
const MAX_TOKENS: u64 = 12;

/// "ADDR (KV KV) layers A..B" from `/health` → "A..B".
fn health_layers(server: &Server) -> Vec<String> {
    let mut resp = ureq::get(&format!("{}/health", server.base))
        .header("authorization", &format!("Bearer {API_KEY}"))
        .call()
        .expect("health");
    let body: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    body["stages"]
        .as_array()
        .unwrap_or_else(|| panic!("stages in {body}"))
        .iter()
        .map(|s| s.as_str().unwrap().rsplit(' ').next().unwrap().to_string())
        .collect()
}

#[test]
fn page_asks_for_the_key_shows_the_pool_and_streams_a_chat() {
    let path = model(SMOLLM2);
    // 160 MiB each cannot hold SmolLM2 with its context alone: two stages.
    let workers = [Worker::start("160MiB", None), Worker::start("160MiB", None)];
    let mut args = vec!["-c", "512", "-n", "2", "--api-key", API_KEY];
    for w in &workers {
        args.extend(["--worker", w.spec.as_str()]);
    }
    let server = Server::start(&path, &args);
    let layers = health_layers(&server);
    assert_eq!(layers.len(), 2, "two stages: {layers:?}");

    // What the API answers greedily: the page must show the same text.
    let (status, whole) = post_with(
        &format!("{}/v1/chat/completions", server.base),
        &json!({"messages": [{"role": "user", "content": PROMPT}],
                "max_tokens": MAX_TOKENS, "temperature": 0}),
        Some(API_KEY),
    );
    assert_eq!(status, 200, "{whole}");
    let expected = whole["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let expected_tokens = whole["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(expected_tokens >= 2, "a reply of several tokens: {whole}");

    let browser = Browser::start();
    browser.open(&format!("{}/", server.base));
    // No key yet: the page asks for one instead of failing silently.
    browser.wait_for(
        "the API key form",
        "return !document.getElementById('key-form').hidden",
        Duration::from_secs(20),
    );
    browser.eval(&format!(
        "document.getElementById('key').value = '{API_KEY}';
         document.getElementById('key-form').requestSubmit();"
    ));
    let picked = browser.wait_for(
        "the model in the picker",
        "return document.getElementById('model').value",
        Duration::from_secs(20),
    );
    assert_eq!(picked, whole["model"], "the picker lists the served model");

    // The pool view: one row per stage with that stage's layers.
    let shown = browser.wait_for(
        "both stages' layers",
        "const rows = [...document.querySelectorAll('#pool-body tr.stage')];
         return rows.length === 2 && rows.every(r => r.querySelector('.layers').textContent)
             ? rows.map(r => r.dataset.layers) : null;",
        Duration::from_secs(20),
    );
    let shown: Vec<String> = serde_json::from_value(shown).unwrap();
    assert_eq!(shown, layers, "the page shows /health's stages");
    browser.wait_for(
        "each stage's link time and KV blocks",
        "const t = document.getElementById('pool-body').innerText;
         return /\\d+\\.\\d+ ms/.test(t) && /used, \\d+ free/.test(t) && /failover/.test(t);",
        Duration::from_secs(20),
    );

    // A chat message streams a reply: the text grows in several steps.
    // The lengths the reply had each time the page changed: a reply that
    // came whole would show only its final length.
    browser.eval(&format!(
        "window.lengths = new Set();
         new MutationObserver(() => {{
             const m = document.querySelector('#messages .msg.assistant');
             if (m) window.lengths.add(m.textContent.length);
         }}).observe(document.getElementById('messages'),
                     {{subtree: true, childList: true, characterData: true}});
         document.getElementById('temperature').value = '0';
         document.getElementById('max-tokens').value = '{MAX_TOKENS}';
         document.getElementById('prompt').value = {PROMPT:?};
         document.getElementById('send').click();"
    ));
    let reply = browser.wait_for(
        "the finished reply",
        "const m = document.querySelector('#messages .msg.assistant.done');
         return m ? m.textContent : null;",
        Duration::from_secs(120),
    );
    assert_eq!(
        reply.as_str().unwrap(),
        expected,
        "the page's streamed reply is the API's"
    );
    let lengths = browser.eval("return [...window.lengths].sort((a, b) => a - b)");
    let lengths: Vec<usize> = serde_json::from_value(lengths).unwrap();
    // Empty, at least one part, then whole.
    assert!(
        lengths.len() >= 3 && lengths.last() == Some(&expected.encode_utf16().count()),
        "the reply streamed in steps: lengths seen {lengths:?}"
    );
    let tps = browser.eval("return document.getElementById('tps').textContent");
    let tps = tps.as_str().unwrap();
    assert!(
        tps.starts_with(&format!("{expected_tokens} tokens, ")) && tps.contains(" tok/s"),
        "tokens per second shown: {tps:?}"
    );
    // What the pool view reads counted both replies' tokens, and each
    // stage answered its Health round trip.
    let mut resp = ureq::get(&format!("{}/v1/pool", server.base))
        .header("authorization", &format!("Bearer {API_KEY}"))
        .call()
        .expect("pool");
    let pool: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    let m = &pool["models"][0];
    assert_eq!(m["state"], "ready", "{pool}");
    assert!(
        m["generated_tokens"].as_u64().unwrap() >= 2 * expected_tokens,
        "{pool}"
    );
    for s in m["stages"].as_array().unwrap() {
        assert_eq!(s["status"], "ready", "{pool}");
        assert!(s["link_ms"].as_f64().unwrap() > 0.0, "{pool}");
        // Each stage ran the replies' positions, and timed them.
        assert!(
            s["tokens_run"].as_u64().unwrap() >= 2 * expected_tokens,
            "{pool}"
        );
        assert!(s["tokens_per_second"].as_f64().unwrap() > 0.0, "{pool}");
    }

    let png = artifact_dir().join("web-page.png");
    browser.screenshot(&png);
    eprintln!("screenshot: {}", png.display());
    assert!(
        std::fs::metadata(&png).unwrap().len() > 10_000,
        "a real screenshot"
    );
}

/// With a models file the picker lists every model with its state; a chat
/// with one that is not loaded loads it and streams, and the pool view
/// then shows it ready on its embedded worker.
#[test]
fn page_loads_a_model_of_a_models_file_on_its_first_chat() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("models.toml");
    let smol = model(SMOLLM2).display().to_string();
    std::fs::write(
        &config,
        format!(
            "[models.tiny-first]\nfile = {smol:?}\nctx_size = 128\nparallel = 1\n\
             [models.smollm2]\nfile = {smol:?}\nctx_size = 256\nparallel = 1\n"
        ),
    )
    .unwrap();
    let mut proc = common::Proc::spawn(
        "serve",
        &[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "-t",
            "1",
        ],
    );
    let rest = proc.wait_for("serving on http://", Duration::from_secs(120));
    let base = format!("http://{}", rest.trim().trim_end_matches("/v1"));

    let browser = Browser::start();
    browser.open(&format!("{base}/"));
    let options = browser.wait_for(
        "both models in the picker",
        "const o = [...document.querySelectorAll('#model option')].map(o => o.textContent);
         return o.length === 2 ? o : null;",
        Duration::from_secs(20),
    );
    assert_eq!(
        options,
        json!(["smollm2 (unloaded)", "tiny-first (unloaded)"])
    );
    browser.eval(&format!(
        "document.getElementById('model').value = 'smollm2';
         document.getElementById('temperature').value = '0';
         document.getElementById('max-tokens').value = '{MAX_TOKENS}';
         document.getElementById('prompt').value = {PROMPT:?};
         document.getElementById('send').click();"
    ));
    let reply = browser.wait_for(
        "the reply after the model loaded",
        "const m = document.querySelector('#messages .msg.assistant.done');
         return m ? m.textContent : null;",
        Duration::from_secs(120),
    );
    assert!(!reply.as_str().unwrap().is_empty(), "a reply");
    browser.wait_for(
        "smollm2 ready with its stage in the pool view",
        "const m = document.querySelector('#pool-body .model[data-model=\"smollm2\"]');
         return m && m.querySelector('.state').textContent === 'ready'
             && m.querySelectorAll('tr.stage').length === 1
             && m.querySelector('tr.stage').dataset.layers === '0..30';",
        Duration::from_secs(20),
    );
    let other = browser.eval(
        "return document.querySelector('#pool-body .model[data-model=\"tiny-first\"] .state').textContent",
    );
    assert_eq!(other, json!("unloaded"));
    browser.wait_for(
        "the picker's states updated",
        "return [...document.querySelectorAll('#model option')].map(o => o.textContent).join()
             === 'smollm2 (ready),tiny-first (unloaded)';",
        Duration::from_secs(10),
    );
    proc.wait_for("model smollm2 loaded in", Duration::from_secs(5));
}
