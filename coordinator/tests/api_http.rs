//! The HTTP API before the model is up, on a real socket: 503 in OpenAI's
//! shape while loading (and after a failed load, with the reason), 401 for
//! a wrong API key, 404 for unknown routes, and `/health`, `/metrics`.

use std::time::Duration;

use strata_coordinator::api::{router, AppState};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn serve(state: std::sync::Arc<AppState>) -> (String, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(async move { axum::serve(listener, router(state)).await });
    (base, rt)
}

fn call(method: &str, url: &str, key: Option<&str>, body: &str) -> (u16, String) {
    let a = agent();
    let mut resp = match method {
        "GET" => {
            let mut r = a.get(url);
            if let Some(k) = key {
                r = r.header("authorization", &format!("Bearer {k}"));
            }
            r.call().unwrap()
        }
        _ => {
            let mut r = a.post(url).header("content-type", "application/json");
            if let Some(k) = key {
                r = r.header("authorization", &format!("Bearer {k}"));
            }
            r.send(body.to_string()).unwrap()
        }
    };
    (
        resp.status().as_u16(),
        resp.body_mut().read_to_string().unwrap(),
    )
}

const CHAT: &str = r#"{"messages":[{"role":"user","content":"hi"}]}"#;

#[test]
fn loading_is_503_and_keys_are_checked_first() {
    let state = AppState::new("m".into(), Some("sekrit".into()));
    let (base, _rt) = serve(state.clone());
    state.set_loading("stage 1/3 (10.0.0.2:7070): loading layers 0..27");

    let (status, body) = call(
        "POST",
        &format!("{base}/v1/chat/completions"),
        Some("sekrit"),
        CHAT,
    );
    assert_eq!(status, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Loading model: stage 1/3"),
        "{body}"
    );
    assert_eq!(v["error"]["type"], "server_error");

    let (status, body) = call(
        "POST",
        &format!("{base}/v1/completions"),
        Some("wrong"),
        r#"{"prompt":"x"}"#,
    );
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("invalid_api_key"), "{body}");
    let (status, _) = call("GET", &format!("{base}/v1/models"), None, "");
    assert_eq!(status, 401);
    let (status, body) = call("GET", &format!("{base}/v1/models"), Some("sekrit"), "");
    assert_eq!(
        (status, body.contains(r#""id":"m""#)),
        (200, true),
        "{body}"
    );

    // /health is open as a bare liveness check; the reason (which names
    // workers and addresses) and /metrics need the key.
    let (status, body) = call("GET", &format!("{base}/health"), None, "");
    assert_eq!((status, body.as_str()), (503, r#"{"status":"loading"}"#));
    let (status, body) = call("GET", &format!("{base}/health"), Some("sekrit"), "");
    assert_eq!(status, 503);
    assert!(
        body.contains(r#""status":"loading""#) && body.contains("loading layers 0..27"),
        "{body}"
    );
    let (status, body) = call("GET", &format!("{base}/metrics"), None, "");
    assert_eq!(status, 401, "{body}");
    let (status, body) = call("GET", &format!("{base}/metrics"), Some("sekrit"), "");
    assert_eq!(
        (status, body.contains("strata_up 0")),
        (200, true),
        "{body}"
    );
    let (status, body) = call("GET", &format!("{base}/v2/nothing"), None, "");
    assert_eq!(status, 404, "{body}");

    // A body past the limit is refused in OpenAI's shape, not as plain text.
    let big = format!(
        r#"{{"prompt":"{}"}}"#,
        "x".repeat(strata_coordinator::api::server::MAX_BODY_BYTES)
    );
    let (status, body) = call(
        "POST",
        &format!("{base}/v1/completions"),
        Some("sekrit"),
        &big,
    );
    assert_eq!(status, 413, "{body}");
    assert!(
        body.contains("invalid_request_error") && body.contains("request body"),
        "{body}"
    );

    state.set_failed("worker 10.0.0.3:7070: connection refused");
    let (status, body) = call("GET", &format!("{base}/health"), None, "");
    assert_eq!((status, body.as_str()), (503, r#"{"status":"error"}"#));
    let (status, body) = call("GET", &format!("{base}/health"), Some("sekrit"), "");
    assert_eq!(status, 503);
    assert!(
        body.contains(r#""status":"error""#) && body.contains("connection refused"),
        "{body}"
    );
    let (status, body) = call(
        "POST",
        &format!("{base}/v1/chat/completions"),
        Some("sekrit"),
        CHAT,
    );
    assert_eq!(status, 503);
    assert!(
        body.contains("failed to load") && body.contains("10.0.0.3:7070"),
        "{body}"
    );
}

/// The page and its assets need no key (they hold no data) and allow
/// scripts from this server only; `/v1/pool` needs the key and shows the
/// model loading before any stage exists.
#[test]
fn the_page_is_served_and_the_pool_view_needs_the_key() {
    let state = AppState::new("m".into(), Some("sekrit".into()));
    let (base, _rt) = serve(state.clone());
    state.set_loading("connecting to 2 worker(s)");
    for (path, kind, needle) in [
        ("/", "text/html", "<script src=\"/web/app.js\">"),
        ("/web/app.js", "text/javascript", "/v1/chat/completions"),
        ("/web/style.css", "text/css", "#messages"),
    ] {
        let mut resp = agent().get(&format!("{base}{path}")).call().unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        let h = resp.headers();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        assert!(
            h["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("script-src 'self'"),
            "{path}"
        );
        assert!(
            resp.body_mut().read_to_string().unwrap().contains(needle),
            "{path}"
        );
    }
    let (status, body) = call("GET", &format!("{base}/v1/pool"), None, "");
    assert_eq!(status, 401, "{body}");
    let (status, body) = call("GET", &format!("{base}/v1/pool"), Some("sekrit"), "");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["models"][0]["id"], "m", "{body}");
    assert_eq!(v["models"][0]["state"], "loading", "{body}");
    assert_eq!(
        v["models"][0]["message"], "connecting to 2 worker(s)",
        "{body}"
    );
    assert_eq!(v["models"][0]["stages"], serde_json::json!([]), "{body}");
    let (status, body) = call("GET", &format!("{base}/v1/models"), Some("sekrit"), "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""state":"loading""#), "{body}");
}
