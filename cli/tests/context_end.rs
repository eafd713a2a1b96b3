//! Sequences that run to the end of their context while new ones take
//! their place: every request must finish ("length"), none may fail because
//! the next batch reached a stage before the finished sequences' KV was
//! freed there.

mod common;

use common::{model, post, Server, SMOLLM2};
use serde_json::json;

#[test]
fn back_to_back_requests_at_the_context_end_all_finish() {
    // Two sequences of 64 positions: the KV cache holds exactly two.
    let server = Server::start(&model(SMOLLM2), &["-c", "64", "-n", "2", "-b", "64"]);
    let url = format!("{}/v1/completions", server.base);
    // About 40 prompt tokens: a new sequence needs most of a finished one's KV.
    let prompt = "Once upon a time, in a village by the sea, there lived an old fisherman \
                  who told stories to the children every evening about the storms he had \
                  seen and the ships he had saved";
    let clients: Vec<_> = (0..3)
        .map(|c| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut finishes = Vec::new();
                for i in 0..6 {
                    let (status, body) = post(
                        &url,
                        &json!({"prompt": format!("{c}{i} {prompt}"), "max_tokens": 500, "temperature": 0}),
                    );
                    assert_eq!(status, 200, "client {c} request {i}: {body}");
                    finishes.push(body["choices"][0]["finish_reason"].as_str().unwrap().to_string());
                    let usage = &body["usage"];
                    assert!(usage["prompt_tokens"].as_u64().unwrap() > 30, "{usage}");
                }
                finishes
            })
        })
        .collect();
    for c in clients {
        for f in c.join().expect("client") {
            assert!(f == "length" || f == "stop", "{f}");
        }
    }
}
