//! Concurrent greedy streams for the failover tests: one thread per prompt,
//! each counting the chunks it has received, so a test can disturb the pool
//! mid-generation and then check what every stream got.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};

use super::{EventStream, Server};

/// One generated token with its log-prob and the runner-up's (with
/// [`Streams::start_with_top2`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub token: String,
    pub logprob: f64,
    pub runner_up: f64,
}

type StreamOut = (String, Vec<Step>);

pub struct Streams {
    threads: Vec<JoinHandle<Result<StreamOut, String>>>,
    tokens: Vec<Arc<AtomicUsize>>,
    max_tokens: usize,
}

impl Streams {
    /// One `ignore_eos` greedy completion stream of `max_tokens` per prompt.
    pub fn start(server: &Server, prompts: &[&str], max_tokens: usize) -> Streams {
        Self::open(server, prompts, max_tokens, false)
    }

    /// [`Self::start`], each token with its top two log-probs
    /// ([`Self::finish_steps`]).
    pub fn start_with_top2(server: &Server, prompts: &[&str], max_tokens: usize) -> Streams {
        Self::open(server, prompts, max_tokens, true)
    }

    fn open(server: &Server, prompts: &[&str], max_tokens: usize, top2: bool) -> Streams {
        let mut threads = Vec::new();
        let mut tokens = Vec::new();
        for prompt in prompts {
            let prompt = prompt.to_string();
            let url = format!("{}/v1/completions", server.base);
            let seen = Arc::new(AtomicUsize::new(0));
            tokens.push(seen.clone());
            threads.push(std::thread::spawn(move || {
                let mut body = json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                                      "stream": true, "ignore_eos": true});
                if top2 {
                    body["logprobs"] = json!(2);
                }
                let mut stream = EventStream::open(&url, &body);
                let mut text = String::new();
                let mut steps = Vec::new();
                let mut finish = None;
                while let Some(d) = stream.next_data() {
                    if d == "[DONE]" {
                        break;
                    }
                    let v: Value = serde_json::from_str(&d).map_err(|e| format!("{e}: {d}"))?;
                    if v.get("error").is_some() {
                        return Err(format!("{prompt:?}: error event {d}"));
                    }
                    let c = &v["choices"][0];
                    text.push_str(c["text"].as_str().unwrap_or(""));
                    if top2 {
                        steps.extend(steps_of(&c["logprobs"]));
                    }
                    if let Some(f) = c["finish_reason"].as_str() {
                        finish = Some(f.to_string());
                    }
                    seen.fetch_add(1, Ordering::Relaxed);
                }
                match finish.as_deref() {
                    Some("length") => Ok((text, steps)),
                    other => Err(format!("{prompt:?}: finished with {other:?}: {text:?}")),
                }
            }));
        }
        Streams {
            threads,
            tokens,
            max_tokens,
        }
    }

    /// Until every stream has `n` tokens: the disruption lands mid-generation.
    pub fn wait_for_tokens(&self, n: usize) {
        let all = || self.tokens.iter().all(|t| t.load(Ordering::Relaxed) >= n);
        assert!(
            super::eventually(Duration::from_secs(180), all),
            "streams did not start"
        );
        assert!(
            self.tokens
                .iter()
                .all(|t| t.load(Ordering::Relaxed) < self.max_tokens),
            "a stream finished before the disruption"
        );
    }

    /// Tokens each stream has received so far.
    pub fn seen(&self) -> Vec<usize> {
        self.tokens
            .iter()
            .map(|t| t.load(Ordering::Relaxed))
            .collect()
    }

    /// Each stream's text, in prompt order; panics on a stream that failed.
    pub fn finish(self) -> Vec<String> {
        self.outputs().into_iter().map(|(text, _)| text).collect()
    }

    /// Each stream's tokens with their top two log-probs, in prompt order.
    pub fn finish_steps(self) -> Vec<Vec<Step>> {
        self.outputs().into_iter().map(|(_, steps)| steps).collect()
    }

    fn outputs(self) -> Vec<StreamOut> {
        self.threads
            .into_iter()
            .map(|t| {
                t.join()
                    .expect("stream thread")
                    .unwrap_or_else(|e| panic!("{e}"))
            })
            .collect()
    }
}

/// The steps of a completion's (or one chunk's) `logprobs`.
pub fn steps_of(logprobs: &Value) -> Vec<Step> {
    let tokens = logprobs["tokens"].as_array().cloned().unwrap_or_default();
    let lps = logprobs["token_logprobs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let tops = logprobs["top_logprobs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    tokens
        .iter()
        .zip(lps.iter().zip(&tops))
        .map(|(t, (lp, top))| {
            let logprob = lp.as_f64().unwrap();
            // Two tokens of the same text share one key: the runner-up is
            // then as likely as far as the text shows.
            let runner_up = top
                .as_object()
                .map(|o| {
                    let mut v: Vec<f64> = o.values().filter_map(Value::as_f64).collect();
                    v.sort_by(|a, b| b.total_cmp(a));
                    if v.len() < 2 {
                        logprob
                    } else {
                        v[1]
                    }
                })
                .unwrap_or(logprob);
            Step {
                token: t.as_str().unwrap_or("").to_string(),
                logprob,
                runner_up,
            }
        })
        .collect()
}

/// Asserts that `have` has `want`'s tokens, each log-prob within `tolerance`,
/// up to `want`'s first near-tie (its top two closer than twice `tolerance`,
/// where another arithmetic may pick either); returns how many it compared.
pub fn same_up_to_near_tie(want: &[Step], have: &[Step], tolerance: f64) -> usize {
    let mut sure = 0;
    for (i, w) in want.iter().enumerate() {
        if w.logprob - w.runner_up < 2.0 * tolerance {
            break;
        }
        let h = have
            .get(i)
            .unwrap_or_else(|| panic!("ended after {i} tokens: {have:?} vs {want:?}"));
        assert_eq!(h.token, w.token, "token {i}: {have:?} vs {want:?}");
        assert!(
            (h.logprob - w.logprob).abs() < tolerance,
            "token {i}'s log-prob: {h:?} vs {w:?}"
        );
        sure += 1;
    }
    sure
}
