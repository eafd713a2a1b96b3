//! Fuzzes the OpenAI request bodies the coordinator accepts from the LAN:
//! the input as JSON into `ChatRequest` and `CompletionRequest` (serde, as
//! axum's `Json` extractor does), then `SamplingFields::validate`, the
//! public check every request passes before it reaches the scheduler.
//! Any body must end in parameters or an error: no panic.
//!
//! Reaches only the public API of `coordinator/src/api/request.rs`; the
//! endpoint-specific checks in the handlers (messages, prompt forms,
//! logprobs ranges) are private to `api/openai.rs` and not fuzzed here.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_coordinator::api::request::{
    ContentField, PromptField, MAX_TOP_LOGPROBS,
};
use strata_coordinator::api::{ChatRequest, CompletionRequest, GenerationParams};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<ChatRequest>(data) {
        for m in &req.messages {
            let chars = match &m.content {
                Some(ContentField::Text(t)) => t.len(),
                Some(ContentField::Parts(parts)) => {
                    parts.iter().map(|p| p.text.as_ref().map_or(0, String::len)).sum()
                }
                None => 0,
            };
            std::hint::black_box((chars, m.role.len()));
        }
        let logprobs = match (req.logprobs, req.top_logprobs) {
            (true, Some(n)) if (0..=MAX_TOP_LOGPROBS as i64).contains(&n) => Some(n as usize),
            (true, _) => Some(0),
            (false, _) => None,
        };
        check(req.sampling.validate(logprobs));
    }
    if let Ok(req) = serde_json::from_slice::<CompletionRequest>(data) {
        std::hint::black_box(match &req.prompt {
            PromptField::Text(t) => t.len(),
            PromptField::Texts(v) => v.len(),
            PromptField::Tokens(v) => v.len(),
        });
        let logprobs = req.logprobs.and_then(|n| usize::try_from(n).ok()).filter(|&n| n <= MAX_TOP_LOGPROBS);
        check(req.sampling.validate(logprobs));
    }
});

/// What validation promises of the parameters it lets through.
fn check(r: Result<GenerationParams, strata_coordinator::api::ApiError>) {
    let Ok(p) = r else { return };
    assert!((0.0..=2.0).contains(&p.temperature));
    assert!((0.0..=1.0).contains(&p.top_p) && (0.0..=1.0).contains(&p.min_p));
    assert!((0.0..=10.0).contains(&p.repetition_penalty));
    assert!((-2.0..=2.0).contains(&p.presence_penalty) && (-2.0..=2.0).contains(&p.frequency_penalty));
    assert!(p.stop.len() <= 16 && p.stop.iter().all(|s| !s.is_empty()));
    assert!(p.max_tokens.is_none_or(|m| m >= 1));
}
