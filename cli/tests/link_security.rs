//! What crosses the network between a coordinator and its workers. Every
//! link runs through a relay in this test that keeps a copy of the bytes it
//! forwards: the coordinator's links to both workers, and the first
//! worker's data stream to the second.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{model, post, Server, Worker, SMOLLM2, TOKEN};
use serde_json::json;

/// Bytes to the worker, bytes back.
type Conn = (Vec<u8>, Vec<u8>);

/// One relayed connection: the bytes each way.
#[derive(Default)]
struct Captured {
    to_worker: Vec<u8>,
    to_client: Vec<u8>,
}

/// Forwards every connection on its own port to `target`, keeping copies.
struct Relay {
    addr: String,
    conns: Arc<Mutex<Vec<Arc<Mutex<Captured>>>>>,
}

impl Relay {
    fn start(target: &str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let conns: Arc<Mutex<Vec<Arc<Mutex<Captured>>>>> = Arc::default();
        let (all, target) = (conns.clone(), target.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(worker) = TcpStream::connect(&target) else {
                    continue;
                };
                let cap = Arc::new(Mutex::new(Captured::default()));
                all.lock().unwrap().push(cap.clone());
                let pump = |mut from: TcpStream, mut to: TcpStream, up: bool| {
                    let cap = cap.clone();
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 << 10];
                        while let Ok(n @ 1..) = from.read(&mut buf) {
                            {
                                let mut c = cap.lock().unwrap();
                                let side = if up {
                                    &mut c.to_worker
                                } else {
                                    &mut c.to_client
                                };
                                side.extend_from_slice(&buf[..n]);
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Write);
                    });
                };
                pump(
                    client.try_clone().unwrap(),
                    worker.try_clone().unwrap(),
                    true,
                );
                pump(worker, client, false);
            }
        });
        Relay { addr, conns }
    }

    fn captured(&self) -> Vec<Conn> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .map(|c| {
                let c = c.lock().unwrap();
                (c.to_worker.clone(), c.to_client.clone())
            })
            .collect()
    }
}

/// Splits a byte stream into TLS records (type, payload length); `None`
/// when it is not one (a record header that makes no sense).
fn tls_records(bytes: &[u8]) -> Option<Vec<(u8, usize)>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 5 <= bytes.len() {
        let (kind, major) = (bytes[at], bytes[at + 1]);
        let len = u16::from_be_bytes([bytes[at + 3], bytes[at + 4]]) as usize;
        if !(0x14..=0x17).contains(&kind) || major != 3 || len > (1 << 14) + 256 {
            return None;
        }
        out.push((kind, len));
        at += 5 + len;
    }
    Some(out)
}

/// After the first flight (handshake records and the compatibility
/// ChangeCipherSpec), TLS 1.3 sends only encrypted application-data records.
fn all_encrypted_after_hello(records: &[(u8, usize)]) -> bool {
    let first_app = records.iter().position(|r| r.0 == 0x17);
    match first_app {
        None => true,
        Some(i) => {
            records[..i].iter().all(|r| r.0 == 0x16 || r.0 == 0x14)
                && records[i..].iter().all(|r| r.0 == 0x17)
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

const PROMPT: &str = "The lighthouse keeper whispered the password, which was";

/// Two workers behind relays, a coordinator, one completion; returns the
/// relays' captures and the completion's text.
fn serve_through_relays(insecure: bool) -> (Vec<Conn>, String) {
    let model_path = model(SMOLLM2);
    let extra: &[&str] = if insecure { &["--insecure"] } else { &[] };
    let state = common::worker_state_dir();
    let workers: Vec<Worker> = (0..2)
        .map(|_| Worker::start_in("127.0.0.1:0", "150MiB", None, &[], &state, extra))
        .collect();
    let relays: Vec<Relay> = workers.iter().map(|w| Relay::start(&w.addr)).collect();
    // The coordinator knows the workers only by their relays' addresses,
    // so it also tells the first stage to send through the second relay.
    let specs: Vec<String> = workers
        .iter()
        .zip(&relays)
        .map(|(w, r)| w.spec.replacen(&w.addr, &r.addr, 1))
        .collect();
    let mut args = vec!["-c", "128", "-n", "1"];
    for s in &specs {
        args.extend(["--worker", s.as_str()]);
    }
    args.extend(extra);
    let server = Server::start(&model_path, &args);
    let (status, body) = common::get(&format!("{}/health", server.base));
    assert_eq!(status, 200, "{body}");
    let (status, reply) = post(
        &format!("{}/v1/completions", server.base),
        &json!({"prompt": PROMPT, "max_tokens": 8, "temperature": 0}),
    );
    assert_eq!(status, 200, "{reply}");
    let text = reply["choices"][0]["text"].as_str().unwrap().to_string();
    drop(server);
    std::thread::sleep(Duration::from_millis(200));
    let stages = relays.iter().filter(|r| !r.captured().is_empty()).count();
    assert_eq!(stages, 2, "both workers were reached through their relays");
    (relays.iter().flat_map(|r| r.captured()).collect(), text)
}

#[test]
fn every_worker_link_is_tls_and_carries_no_secret_in_clear() {
    let (conns, text) = serve_through_relays(false);
    assert!(!text.is_empty());
    // The coordinator's two links and the first worker's data stream.
    assert!(conns.len() >= 3, "{} connections", conns.len());
    for (i, (up, down)) in conns.iter().enumerate() {
        assert!(
            !up.is_empty() && !down.is_empty(),
            "connection {i} carried data"
        );
        assert!(
            !contains(up, b"PRI * HTTP/2.0"),
            "connection {i}: HTTP/2 preface in clear"
        );
        for (dir, bytes) in [("to the worker", up), ("back", down)] {
            let records = tls_records(bytes)
                .unwrap_or_else(|| panic!("connection {i} {dir}: not a TLS record stream"));
            assert_eq!(
                records[0].0, 0x16,
                "connection {i} {dir} opens with a handshake"
            );
            assert!(
                all_encrypted_after_hello(&records),
                "connection {i} {dir}: a record in clear after the handshake: {records:?}"
            );
            for secret in [
                TOKEN.as_bytes(),
                PROMPT.as_bytes(),
                b"lighthouse",
                text.as_bytes(),
            ] {
                assert!(
                    !contains(bytes, secret),
                    "connection {i} {dir} shows {:?}",
                    String::from_utf8_lossy(secret)
                );
            }
        }
    }
}

/// The same capture over `--insecure` links sees the HTTP/2 preface: the
/// relay really sees what goes over the wire.
#[test]
fn insecure_links_are_plaintext_as_documented() {
    let (conns, _) = serve_through_relays(true);
    assert!(conns.len() >= 3, "{} connections", conns.len());
    for (i, (up, _)) in conns.iter().enumerate() {
        assert!(up.starts_with(b"PRI * HTTP/2.0"), "connection {i} is h2c");
        assert!(tls_records(up).is_none());
    }
}

#[test]
fn serve_refuses_a_worker_with_the_wrong_certificate_and_loads_nothing() {
    let model_path = model(SMOLLM2);
    let own_state = tempfile::tempdir().unwrap();
    let worker = Worker::start_in("127.0.0.1:0", "400MiB", None, &[], own_state.path(), &[]);
    // The pin of the shared test identity, which this worker does not have.
    let wrong = format!("{}#{}", worker.addr, common::worker_fingerprint());
    assert_ne!(wrong, worker.spec);
    let dir = tempfile::tempdir().unwrap();
    let token = common::token_file(dir.path());
    // A `strata serve` that is never ready: it only has to say why.
    let serve_with = |worker_spec: &str| {
        let (model, token) = (model_path.to_str().unwrap(), token.to_str().unwrap());
        common::Proc::spawn(
            "serve",
            &[
                "serve",
                "-m",
                model,
                "--listen",
                "127.0.0.1:0",
                "--token-file",
                token,
                "-c",
                "128",
                "-n",
                "1",
                "--worker",
                worker_spec,
            ],
        )
    };
    let mut serve = serve_with(&wrong);
    serve.wait_for("not the pinned", Duration::from_secs(60));
    // The worker never got as far as an RPC: still idle, nothing pushed.
    let health = worker.health();
    assert_eq!(
        health.status,
        strata_proto::v1::health_reply::Status::Idle as i32
    );

    // And a bare address is refused up front, with how to pin it.
    let mut bare = serve_with(&worker.addr);
    bare.wait_for("has no pinned certificate", Duration::from_secs(30));
}
