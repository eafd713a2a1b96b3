//! Decoding past 512 KV cells through `strata serve`: the coordinator marks
//! each generated token it feeds back as a decode step
//! (`BatchEntry.decode`), so the CPU stage attends in ggml's split-KV order,
//! and the served log-probabilities stay within 0.05 of llama.cpp's
//! (`tests/data/smollm2-135m-tiled.json`: llama-server `-t 2 -fa on`, one
//! sequence, its default batching, which `serve` follows: the prompt rows
//! of 512-row ubatches take ggml's tiled order). The one-chunk order misses
//! that bound by up to 0.31 here (docs/numerics.md). Both long prompts run
//! at once, so their decode rows share batches, which must not change a
//! row's order.

mod common;

use common::{model, post, reference, Server, SMOLLM2};
use serde_json::{json, Value};
use strata_model::tokenizer::Tokenizer;
use strata_model::GgufFile;
use strata_tests::llama_reference::{cases, Case, MAX_LOGPROB_DEVIATION, TIE};

/// Prompts that reach past 256 positions, where decode steps split.
const LONG_PROMPT_TOKENS: usize = 512;

/// Checks the reply's steps against llama.cpp's while the greedy picks
/// agree: they may part only at a near tie (a last-bit difference may pick
/// the other token there). Returns how many steps were compared.
fn check(case: &Case, tok: &Tokenizer, body: &Value) -> usize {
    let lp = &body["choices"][0]["logprobs"];
    let (texts, tops) = (
        lp["tokens"].as_array().unwrap(),
        lp["top_logprobs"].as_array().unwrap(),
    );
    let mut compared = 0;
    for (i, step) in case.steps.iter().enumerate() {
        let Some(top) = &step.top else { break };
        let piece = String::from_utf8_lossy(tok.piece(step.token));
        if texts[i].as_str().unwrap() != piece {
            let gap = top[0].1 - top[1].1;
            assert!(
                gap < TIE,
                "step {i}: picked {} where llama.cpp picked {piece:?}, {gap} ahead",
                texts[i]
            );
            break;
        }
        let ours = tops[i].as_object().unwrap();
        let floor = ours
            .values()
            .filter_map(Value::as_f64)
            .fold(f64::MAX, f64::min);
        for &(id, want) in top {
            let Ok(text) = std::str::from_utf8(tok.piece(id)) else {
                continue;
            };
            match ours.get(text).and_then(Value::as_f64) {
                Some(got) => assert!(
                    (got - want as f64).abs() <= MAX_LOGPROB_DEVIATION as f64,
                    "step {i}: {text:?} logprob {got} vs llama.cpp's {want}"
                ),
                // Outside our top 5: it must be about the 5th's value or lower.
                None => assert!(
                    (want as f64) <= floor + MAX_LOGPROB_DEVIATION as f64,
                    "step {i}: {text:?} at {want} in llama.cpp's top 5, not in ours {ours:?}"
                ),
            }
        }
        compared += 1;
    }
    compared
}

#[test]
fn decode_past_512_cells_gives_llama_cpp_logprobs_through_serve() {
    let r = reference("smollm2-135m-tiled");
    let path = model(SMOLLM2);
    let tok = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let long: Vec<Case> = cases(&r)
        .into_iter()
        .filter(|c| c.prompt.len() > LONG_PROMPT_TOKENS)
        .collect();
    assert_eq!(long.len(), 2, "the reference's two long prompts");
    let server = Server::start(&path, &["-c", "1024", "-n", "2"]);
    let url = format!("{}/v1/completions", server.base);
    let replies: Vec<_> = long
        .iter()
        .map(|c| {
            let (url, prompt, n) = (url.clone(), c.prompt.clone(), c.steps.len());
            std::thread::spawn(move || {
                post(
                    &url,
                    &json!({"prompt": prompt, "max_tokens": n, "temperature": 0, "logprobs": 5}),
                )
            })
        })
        .collect();
    for (case, reply) in long.iter().zip(replies) {
        let (status, body) = reply.join().unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["usage"]["prompt_tokens"].as_u64(),
            Some(case.prompt.len() as u64)
        );
        let compared = check(case, &tok, &body);
        eprintln!(
            "{} prompt tokens: {compared} steps within 0.05 of llama.cpp",
            case.prompt.len()
        );
        assert!(compared >= 8, "only {compared} steps before a near tie");
    }
}
