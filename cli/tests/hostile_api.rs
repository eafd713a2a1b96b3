//! Hostile clients against a real `strata serve`: over a thousand requests
//! written by hand on raw TCP (malformed JSON, wrong types for every field,
//! bodies past the limit, deep nesting, invalid UTF-8, broken HTTP framing,
//! unknown routes and methods, slow-loris senders, streams dropped midway,
//! many connections at once). Every answer must be a 4xx in OpenAI's error
//! shape, a 200, or a clean close: never a 5xx, a hang or a crash; and a
//! greedy request run alongside must keep its text.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{model, post, Server, SMOLLM2};
use serde_json::{json, Value};

/// The server's body deadline in this test (`--request-timeout`).
const REQUEST_TIMEOUT_S: f64 = 2.0;
/// No byte for this long from the server counts as a hang.
const HANG: Duration = Duration::from_secs(30);
const SEED: u64 = 0x5eed_f1a2;
const MUTATIONS: usize = 520;
const THREADS: usize = 6;

/// What came back for one request.
#[derive(Debug)]
enum Reply {
    Status {
        code: u16,
        body: Vec<u8>,
    },
    /// The server closed without answering (or reset the connection).
    Closed,
    /// Nothing within [`HANG`].
    Hung,
}

/// splitmix64: a seeded generator without another dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Tallies per kind of request, and what went wrong.
#[derive(Default)]
struct Tally {
    sent: BTreeMap<&'static str, usize>,
    statuses: BTreeMap<String, usize>,
    failures: Vec<String>,
}

struct Client {
    addr: String,
    tally: Mutex<Tally>,
}

fn request(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn post_raw(path: &str, body: &[u8]) -> Vec<u8> {
    request("POST", path, body)
}

/// Reads a reply to its end (the requests say `Connection: close`).
fn read_reply(stream: &mut TcpStream) -> Reply {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Reply::Hung
            }
            // A reset after (or instead of) an answer.
            Err(_) => break,
        }
    }
    parse_reply(&buf)
}

fn parse_reply(buf: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(buf);
    let Some(code) = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
    else {
        return Reply::Closed;
    };
    let body = match buf.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => buf[i + 4..].to_vec(),
        None => Vec::new(),
    };
    Reply::Status { code, body }
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect to strata serve");
    s.set_read_timeout(Some(HANG)).unwrap();
    s.set_write_timeout(Some(HANG)).unwrap();
    s
}

/// Sends `bytes` and reads the reply. A write cut short (the server
/// answered 413 and closed) still reads what was answered.
fn exchange(addr: &str, bytes: &[u8]) -> Reply {
    let mut s = connect(addr);
    let _ = s.write_all(bytes);
    read_reply(&mut s)
}

/// Whether `body` is `{"error": {"message": string, "type": string, ...}}`.
fn openai_error_shape(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .is_ok_and(|v| v["error"]["message"].is_string() && v["error"]["type"].is_string())
}

impl Client {
    /// Sends one request and checks its reply. With `http_ok`, the request
    /// is well-formed HTTP, so a 4xx must be in OpenAI's shape (hyper's own
    /// bare 400 for broken framing is accepted otherwise).
    fn check(&self, kind: &'static str, bytes: &[u8], http_ok: bool) -> Reply {
        let reply = exchange(&self.addr, bytes);
        self.judge(kind, &reply, http_ok, bytes);
        reply
    }

    fn judge(&self, kind: &'static str, reply: &Reply, http_ok: bool, sent: &[u8]) {
        let shown = || String::from_utf8_lossy(&sent[..sent.len().min(300)]).into_owned();
        let mut t = self.tally.lock().unwrap();
        *t.sent.entry(kind).or_default() += 1;
        let (label, problem) = match reply {
            Reply::Hung => ("hung".to_string(), Some("no reply within 30 s".to_string())),
            // Valid HTTP always deserves an answer; a silent close there
            // is what a panicking handler looks like from outside.
            Reply::Closed if http_ok && kind != "huge" => (
                "closed".to_string(),
                Some("closed without an answer (a panic?)".to_string()),
            ),
            Reply::Closed => ("closed".to_string(), None),
            Reply::Status { code, body } => {
                let problem = match code {
                    200 => None,
                    // Overload is an honest answer when the queue is full.
                    503 if String::from_utf8_lossy(body).contains("busy") => None,
                    500.. => Some(format!("{code}: {}", String::from_utf8_lossy(body))),
                    400..=499 if http_ok && !openai_error_shape(body) => Some(format!(
                        "{code} not in OpenAI's error shape: {:?}",
                        String::from_utf8_lossy(body)
                    )),
                    400..=499 => None,
                    _ => Some(format!("unexpected status {code}")),
                };
                (code.to_string(), problem)
            }
        };
        *t.statuses.entry(label).or_default() += 1;
        if let Some(p) = problem {
            t.failures
                .push(format!("[{kind}] {p}\n    sent: {}", shown()));
        }
    }
}

/// A valid chat body whose generation is one token; `max_tokens` is said
/// twice (under both names) so a mutation of one key still stops early.
fn valid_chat() -> Value {
    // The limits first: `mutate` leaves them alone (serde_json keeps
    // insertion order here, llguidance asks for `preserve_order`).
    json!({
        "max_completion_tokens": 1,
        "max_tokens": 1,
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Hi"}],
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["\n"],
        "stream": false,
        "seed": 7
    })
}

fn valid_completion() -> Value {
    json!({"max_completion_tokens": 1, "max_tokens": 1, "prompt": "Hi", "temperature": 0})
}

/// Values of every JSON type, edge numbers and odd strings.
fn wrong_values() -> Vec<Value> {
    vec![
        Value::Null,
        json!(true),
        json!("text"),
        json!(""),
        json!(-1),
        json!(0),
        json!(1.5),
        json!(-1e12),
        json!(1e308),
        json!(1_000_000_000_000i64),
        json!(u64::MAX),
        json!(i64::MIN),
        json!([]),
        json!([1, "a", null]),
        json!({}),
        json!({"nested": {"deeper": [1]}}),
        json!("\u{0000}\u{ffff}"),
        json!("x".repeat(10_000)),
    ]
}

const CHAT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "stop",
    "stream",
    "stream_options",
    "n",
    "seed",
    "logprobs",
    "top_logprobs",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "ignore_eos",
    "tools",
    "response_format",
    "logit_bias",
];

const COMPLETION_FIELDS: &[&str] = &["prompt", "logprobs", "echo", "suffix", "best_of"];

/// Every field of both endpoints set to every wrong value, and the parts
/// of a chat message too.
fn type_swaps() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    for v in wrong_values() {
        for f in CHAT_FIELDS {
            let mut body = valid_chat();
            // Keep generations short even when the limit is the field swapped.
            let v = match (*f, &v) {
                ("max_tokens" | "max_completion_tokens", Value::Number(n))
                    if n.as_i64().is_some_and(|n| n > 8) =>
                {
                    json!(-7)
                }
                _ => v.clone(),
            };
            body[*f] = v;
            if !f.starts_with("max_") {
                body["max_tokens"] = json!(1);
            }
            out.push(("/v1/chat/completions", body.to_string().into_bytes()));
        }
        for part in ["role", "content"] {
            let mut body = valid_chat();
            body["messages"][0][part] = v.clone();
            out.push(("/v1/chat/completions", body.to_string().into_bytes()));
        }
        let mut body = valid_chat();
        body["messages"] = json!([v.clone()]);
        out.push(("/v1/chat/completions", body.to_string().into_bytes()));
        for f in COMPLETION_FIELDS {
            let mut body = valid_completion();
            body[*f] = v.clone();
            out.push(("/v1/completions", body.to_string().into_bytes()));
        }
    }
    out
}

/// A valid body with a few bytes dropped, duplicated, flipped or replaced
/// by JSON punctuation. The leading length limits (written first) are
/// left alone so that a body still valid generates one token, not a
/// whole context; wrong types for them are the type swaps' business.
fn mutate(rng: &mut Rng, valid: &[u8]) -> Vec<u8> {
    const LIMITS: &[u8] = br#"{"max_completion_tokens":1,"max_tokens":1,"#;
    assert!(valid.starts_with(LIMITS));
    let mut b = valid.to_vec();
    for _ in 0..1 + rng.below(3) {
        if b.len() <= LIMITS.len() {
            break;
        }
        let i = LIMITS.len() + rng.below(b.len() - LIMITS.len());
        match rng.below(5) {
            0 => {
                b.remove(i);
            }
            1 => b.insert(i, b[i]),
            2 => b[i] ^= 1 << rng.below(8),
            3 => {
                const PUNCTUATION: &[u8] = b"{}[]\",:0-e\\\xff\x00";
                b[i] = PUNCTUATION[rng.below(PUNCTUATION.len())]
            }
            _ => b.truncate(i),
        }
    }
    b
}

/// Requests that break HTTP itself, not the JSON.
fn broken_http() -> Vec<Vec<u8>> {
    let body = valid_chat().to_string();
    let path = "/v1/chat/completions";
    vec![
        b"\r\n\r\n".to_vec(),
        b"GARBAGE\r\n\r\n".to_vec(),
        b"POST\r\n\r\n".to_vec(),
        b"POST / HTTP/9.9\r\n\r\n".to_vec(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        format!("POST {path} HTTP/1.1\r\nContent-Length: -1\r\nConnection: close\r\n\r\n{body}").into_bytes(),
        format!("POST {path} HTTP/1.1\r\nContent-Length: abc\r\nConnection: close\r\n\r\n{body}").into_bytes(),
        format!("POST {path} HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 9\r\nConnection: close\r\n\r\n{body}").into_bytes(),
        format!("POST {path} HTTP/1.1\r\nContent-Length: 99999999999999999999\r\nConnection: close\r\n\r\n{body}").into_bytes(),
        format!("POST {path} HTTP/1.1\r\nNoColonHere\r\nConnection: close\r\n\r\n").into_bytes(),
        format!("POST {path} HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{body}\r\n0\r\n\r\n").into_bytes(),
        format!("POST {path} HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n").into_bytes(),
        format!("POST {path} HTTP/1.1\r\nX-Big: {}\r\nConnection: close\r\n\r\n", "a".repeat(200_000)).into_bytes(),
        format!("POST {}{} HTTP/1.1\r\nConnection: close\r\n\r\n", path, "/a".repeat(50_000)).into_bytes(),
        {
            let mut r = format!("POST {path} HTTP/1.1\r\nConnection: close\r\n").into_bytes();
            for i in 0..2000 {
                r.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
            }
            r.extend_from_slice(b"\r\n");
            r
        },
        b"POST /v1/chat/\xff\xfe HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(),
        b"POST /v1/chat/completions HTTP/1.1\r\nX-Bad: \xff\x00\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
    ]
}

/// Wrong methods, unknown routes, odd paths: valid HTTP each.
fn routes() -> Vec<Vec<u8>> {
    let body = valid_chat().to_string();
    let mut out = Vec::new();
    for method in ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO"] {
        for path in ["/v1/chat/completions", "/v1/completions", "/v1/models"] {
            out.push(request(method, path, body.as_bytes()));
        }
    }
    for path in [
        "/",
        "/v1",
        "/v1/",
        "/v1/chat/completions/",
        "/v1/chat/completions/x",
        "/v2/chat/completions",
        "/../../etc/passwd",
        "/v1/%00",
        "/v1/chat/completions?x=%ff%fe",
        "/metrics/../health",
        "//v1//chat//completions",
        "/V1/CHAT/COMPLETIONS",
    ] {
        out.push(post_raw(path, body.as_bytes()));
    }
    out
}

/// Bodies past the limit, nested past any parser's depth, not UTF-8.
fn oversized_and_odd() -> Vec<(&'static str, Vec<u8>, bool)> {
    let path = "/v1/chat/completions";
    let huge = format!(
        r#"{{"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "a".repeat(17 << 20)
    );
    let mut chunked =
        format!("POST {path} HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            .into_bytes();
    for _ in 0..(17 << 4) {
        chunked.extend_from_slice(format!("{:x}\r\n", 1 << 16).as_bytes());
        chunked.extend(std::iter::repeat_n(b' ', 1 << 16));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let deep = |open: &str, n: usize| open.repeat(n).into_bytes();
    let mut out = vec![
        ("huge", post_raw(path, huge.as_bytes()), true),
        ("huge", chunked, true),
        (
            "huge",
            format!("POST {path} HTTP/1.1\r\nContent-Length: 17000000000\r\nConnection: close\r\n\r\n{{")
                .into_bytes(),
            true,
        ),
        ("deep", post_raw(path, &deep("[", 100_000)), true),
        ("deep", post_raw(path, &deep("{\"a\":", 100_000)), true),
        (
            "deep",
            post_raw(
                path,
                format!(r#"{{"messages":{}}}"#, "[".repeat(100_000)).as_bytes(),
            ),
            true,
        ),
        (
            "deep",
            post_raw(
                path,
                format!(
                    r#"{{"max_tokens":1,"messages":[{{"role":"user","content":"hi"}}],"stop":{}"x"{}}}"#,
                    "[".repeat(127),
                    "]".repeat(127)
                )
                .as_bytes(),
            ),
            true,
        ),
    ];
    for bad in [
        &b"{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}],\"max_tokens\":1}"[..],
        b"{\"messages\":[{\"role\":\"\xc3\x28\",\"content\":\"hi\"}],\"max_tokens\":1}",
        b"{\"prompt\":\"\xed\xa0\x80\",\"max_tokens\":1}",
        b"{\"prompt\":\"\\ud800\",\"max_tokens\":1}",
        b"\xef\xbb\xbf{\"prompt\":\"hi\",\"max_tokens\":1}",
        b"\x00\x00\x00",
    ] {
        for p in ["/v1/chat/completions", "/v1/completions"] {
            out.push(("utf8", post_raw(p, bad), true));
        }
    }
    // Prompts past the context (256 tokens here), as text and as ids.
    let long_text = json!({"prompt": "word ".repeat(5000), "max_tokens": 1}).to_string();
    let ids: Vec<u32> = (0..5000).collect();
    let long_ids = json!({"prompt": ids, "max_tokens": 1}).to_string();
    let out_of_vocab = json!({"prompt": [u32::MAX, 0], "max_tokens": 1}).to_string();
    let many_messages: Vec<Value> = (0..20_000)
        .map(|_| json!({"role": "user", "content": "a"}))
        .collect();
    let many = json!({"messages": many_messages, "max_tokens": 1}).to_string();
    out.push((
        "context",
        post_raw("/v1/completions", long_text.as_bytes()),
        true,
    ));
    out.push((
        "context",
        post_raw("/v1/completions", long_ids.as_bytes()),
        true,
    ));
    out.push((
        "context",
        post_raw("/v1/completions", out_of_vocab.as_bytes()),
        true,
    ));
    out.push(("context", post_raw(path, many.as_bytes()), true));
    // An absurd limit on a prompt that leaves a few tokens of context.
    let absurd = json!({"prompt": "word ".repeat(245), "max_tokens": 1_000_000_000_000i64});
    out.push((
        "absurd_max_tokens",
        post_raw("/v1/completions", absurd.to_string().as_bytes()),
        true,
    ));
    for model in ["", "gpt-4o", "../../etc/passwd", &"m".repeat(5000)] {
        let mut b = valid_chat();
        b["model"] = json!(model);
        out.push((
            "unknown_model",
            post_raw(path, b.to_string().as_bytes()),
            true,
        ));
    }
    out
}

/// Headers then a body trickled slower than the deadline allows, a body
/// that stops halfway, and headers that never end: each must be cut off
/// within a few seconds of `REQUEST_TIMEOUT_S`.
fn slow_loris(client: &Client) {
    let limit = Duration::from_secs_f64(REQUEST_TIMEOUT_S * 3.0 + 2.0);
    let body = valid_chat().to_string();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let cases: [(&'static str, Vec<u8>, usize); 3] = [
        ("slow_body", head.clone().into_bytes(), 1),
        (
            "stalled_body",
            format!("{head}{}", &body[..10]).into_bytes(),
            0,
        ),
        (
            "slow_headers",
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n".to_vec(),
            1,
        ),
    ];
    for (kind, start, trickle) in cases {
        for _ in 0..2 {
            let started = Instant::now();
            let mut s = connect(&client.addr);
            s.set_read_timeout(Some(Duration::from_millis(250)))
                .unwrap();
            s.write_all(&start).unwrap();
            // Trickle one byte at a time until the server answers or closes.
            let mut got = Vec::new();
            let reply = loop {
                if started.elapsed() > limit {
                    break Reply::Hung;
                }
                if trickle > 0 && s.write_all(b" ").is_err() {
                    let _ = s.read_to_end(&mut got);
                    break parse_reply(&got);
                }
                let mut buf = [0u8; 4096];
                match s.read(&mut buf) {
                    Ok(0) => break parse_reply(&got),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => break parse_reply(&got),
                }
                if got.windows(4).any(|w| w == b"\r\n\r\n")
                    && parse_reply(&got).is_status_with_body()
                {
                    break parse_reply(&got);
                }
            };
            client.judge(kind, &reply, kind != "slow_headers", &start);
            if let Reply::Status { code, .. } = &reply {
                if kind != "slow_headers" && *code != 408 {
                    client
                        .tally
                        .lock()
                        .unwrap()
                        .failures
                        .push(format!("[{kind}] answered {code}, not 408"));
                }
            }
        }
    }
}

impl Reply {
    /// A status line whose body (by Content-Length) has fully arrived.
    fn is_status_with_body(&self) -> bool {
        matches!(self, Reply::Status { body, .. } if openai_error_shape(body))
    }
}

/// Opens a streaming completion, reads its first event, then drops the
/// socket without a word.
fn drop_mid_stream(client: &Client) {
    let body = json!({
        "prompt": "Once upon a time",
        "max_tokens": 200,
        "ignore_eos": true,
        "stream": true,
        "temperature": 0
    })
    .to_string();
    let mut s = connect(&client.addr);
    s.write_all(&post_raw("/v1/completions", body.as_bytes()))
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap_or(0);
    let reply = parse_reply(&buf[..n]);
    let ok = matches!(reply, Reply::Status { code: 200, .. });
    let mut t = client.tally.lock().unwrap();
    *t.sent.entry("dropped_stream").or_default() += 1;
    if !ok {
        t.failures
            .push(format!("[dropped_stream] did not start: {reply:?}"));
    }
}

/// Greedy chat text: what must not change under the storm.
fn control(base: &str) -> String {
    let (status, body) = post(
        &format!("{base}/v1/chat/completions"),
        &json!({
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 12,
            "temperature": 0
        }),
    );
    assert_eq!(status, 200, "{body}");
    body["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .to_string()
}

fn sequences_live(base: &str) -> i64 {
    let (_, body) = common::get(&format!("{base}/health"));
    serde_json::from_str::<Value>(&body).unwrap_or_default()["sequences_live"]
        .as_i64()
        .unwrap_or(-1)
}

#[test]
fn hostile_requests_get_4xx_or_a_clean_close_and_never_hurt_the_server() {
    let timeout = REQUEST_TIMEOUT_S.to_string();
    let mut server = Server::start(
        &model(SMOLLM2),
        &["-c", "256", "-n", "2", "--request-timeout", &timeout],
    );
    let base = server.base.clone();
    let client = Arc::new(Client {
        addr: base.trim_start_matches("http://").to_string(),
        tally: Mutex::new(Tally::default()),
    });
    let expected = control(&base);
    let started = Instant::now();

    // The greedy request keeps running while the storm goes on.
    let controls = {
        let base = base.clone();
        std::thread::spawn(move || (0..4).map(|_| control(&base)).collect::<Vec<_>>())
    };

    // Many connections held open, idle, while everything else happens.
    let idle: Vec<TcpStream> = (0..200).map(|_| connect(&client.addr)).collect();

    let mut jobs: Vec<(&'static str, String, Vec<u8>, bool)> = Vec::new();
    let mut rng = Rng(SEED);
    let (chat, completion) = (
        valid_chat().to_string().into_bytes(),
        valid_completion().to_string().into_bytes(),
    );
    for i in 0..MUTATIONS {
        let (path, valid) = if i % 3 == 0 {
            ("/v1/completions", &completion)
        } else {
            ("/v1/chat/completions", &chat)
        };
        jobs.push(("mutated_json", path.into(), mutate(&mut rng, valid), true));
    }
    for (path, body) in type_swaps() {
        jobs.push(("wrong_type", path.into(), body, true));
    }
    for r in routes() {
        jobs.push(("route_method", String::new(), r, true));
    }
    for r in broken_http() {
        jobs.push(("broken_http", String::new(), r, false));
    }
    for (kind, r, http_ok) in oversized_and_odd() {
        jobs.push((kind, String::new(), r, http_ok));
    }
    // Shuffle so every thread sees a mix.
    for i in (1..jobs.len()).rev() {
        jobs.swap(i, rng.below(i + 1));
    }

    let jobs = Arc::new(Mutex::new(jobs));
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (jobs, client) = (jobs.clone(), client.clone());
            std::thread::spawn(move || loop {
                let Some((kind, path, body, http_ok)) = jobs.lock().unwrap().pop() else {
                    break;
                };
                let bytes = if path.is_empty() {
                    body
                } else {
                    post_raw(&path, &body)
                };
                client.check(kind, &bytes, http_ok);
            })
        })
        .collect();
    let side = {
        let client = client.clone();
        std::thread::spawn(move || {
            slow_loris(&client);
            for _ in 0..10 {
                drop_mid_stream(&client);
            }
        })
    };
    for w in workers {
        w.join().expect("storm thread");
    }
    side.join().expect("slow-loris thread");
    let texts = controls.join().expect("control thread");
    drop(idle);

    // Dropped streams free their sequences.
    let freed = common::eventually(Duration::from_secs(20), || sequences_live(&base) == 0);
    let after = control(&base);
    let alive = server.proc.is_running();

    let t = client.tally.lock().unwrap();
    let total: usize = t.sent.values().sum();
    eprintln!(
        "hostile_api: seed {SEED:#x}, {total} requests in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for (kind, n) in &t.sent {
        eprintln!("  {kind:>16}: {n}");
    }
    eprintln!("  answers: {:?}", t.statuses);
    assert!(alive, "strata serve died");
    assert!(
        t.failures.is_empty(),
        "seed {SEED:#x}: {} bad answers:\n{}",
        t.failures.len(),
        t.failures.join("\n")
    );
    assert!(total >= 1000, "only {total} requests");
    assert!(freed, "dropped streams still hold sequences");
    for text in texts.iter().chain([&after]) {
        assert_eq!(text, &expected, "the greedy text changed under load");
    }
}
