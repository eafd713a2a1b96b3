//! OpenAI response bodies: whole responses, stream chunks, usage and the two
//! log-probability formats (chat's `content` list, completions' legacy
//! parallel arrays).

use serde_json::{json, Value};

use super::text::TokenOut;

/// Which endpoint a response is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completion,
}

/// What every body of one response shares.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl ResponseMeta {
    pub fn new(endpoint: Endpoint, seq: u64, model: &str) -> Self {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let prefix = match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completion => "cmpl",
        };
        ResponseMeta {
            endpoint,
            id: format!("{prefix}-strata-{created:x}-{seq}"),
            created,
            model: model.to_string(),
        }
    }
}

impl ResponseMeta {
    /// The `object` field of a whole response or of a stream chunk.
    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completion, _) => "text_completion",
        }
    }
}

/// OpenAI's usage object; `cached_tokens` are the prompt tokens the prefix
/// cache held (`prompt_tokens_details`, as OpenAI reports them).
pub fn usage(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": { "cached_tokens": cached_tokens },
    })
}

fn chat_logprobs(tokens: &[TokenOut]) -> Value {
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            json!({
                "token": t.text,
                "logprob": t.logprob,
                "bytes": t.bytes,
                "top_logprobs": t.top.iter().map(|(text, bytes, lp)| json!({"token": text, "logprob": lp, "bytes": bytes})).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "content": content })
}

/// `text_offset` counts characters from the start of the completion.
fn completion_logprobs(tokens: &[TokenOut], start_offset: usize) -> Value {
    let mut offset = start_offset;
    let mut offsets = Vec::with_capacity(tokens.len());
    for t in tokens {
        offsets.push(offset);
        offset += t.text.chars().count();
    }
    json!({
        "tokens": tokens.iter().map(|t| t.text.clone()).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": tokens.iter().map(|t| {
            t.top.iter().map(|(text, _, lp)| (text.clone(), json!(lp))).collect::<serde_json::Map<_, _>>()
        }).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

fn logprobs(meta: &ResponseMeta, tokens: Option<&[TokenOut]>, text_offset: usize) -> Value {
    match (tokens, meta.endpoint) {
        (None, _) => Value::Null,
        (Some(t), Endpoint::Chat) => chat_logprobs(t),
        (Some(t), Endpoint::Completion) => completion_logprobs(t, text_offset),
    }
}

/// A whole (non-streamed) response.
pub fn response(
    meta: &ResponseMeta,
    text: &str,
    tokens: Option<&[TokenOut]>,
    finish_reason: &str,
    usage: Value,
) -> Value {
    let choice = match meta.endpoint {
        Endpoint::Chat => json!({
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": logprobs(meta, tokens, 0),
            "finish_reason": finish_reason,
        }),
        Endpoint::Completion => json!({
            "index": 0,
            "text": text,
            "logprobs": logprobs(meta, tokens, 0),
            "finish_reason": finish_reason,
        }),
    };
    let object = meta.object(false);
    json!({
        "id": meta.id,
        "object": object,
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": concat!("strata-", env!("CARGO_PKG_VERSION")),
        "choices": [choice],
        "usage": usage,
    })
}

/// One stream chunk: new text (chat's first chunk also carries the role),
/// or the final chunk with its finish reason.
pub fn chunk(
    meta: &ResponseMeta,
    text: &str,
    first: bool,
    tokens: Option<&[TokenOut]>,
    text_offset: usize,
    finish_reason: Option<&str>,
) -> Value {
    let choice = match meta.endpoint {
        Endpoint::Chat => {
            let delta = match (first, finish_reason) {
                (_, Some(_)) if text.is_empty() => json!({}),
                (true, _) => json!({"role": "assistant", "content": text}),
                (false, _) => json!({"content": text}),
            };
            json!({"index": 0, "delta": delta, "logprobs": logprobs(meta, tokens, text_offset), "finish_reason": finish_reason})
        }
        Endpoint::Completion => {
            json!({"index": 0, "text": text, "logprobs": logprobs(meta, tokens, text_offset), "finish_reason": finish_reason})
        }
    };
    let object = meta.object(true);
    json!({
        "id": meta.id,
        "object": object,
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": concat!("strata-", env!("CARGO_PKG_VERSION")),
        "choices": [choice],
    })
}

/// The usage chunk of a stream that asked for `include_usage`: no choices.
pub fn usage_chunk(meta: &ResponseMeta, usage: Value) -> Value {
    let object = meta.object(true);
    json!({"id": meta.id, "object": object, "created": meta.created, "model": meta.model, "choices": [], "usage": usage})
}

/// Puts calls into a whole chat response: content null when there is
/// none, as OpenAI answers a pure tool call.
pub fn add_tool_calls(body: &mut Value, calls: Vec<Value>) {
    let message = &mut body["choices"][0]["message"];
    if message["content"] == "" {
        message["content"] = Value::Null;
    }
    message["tool_calls"] = Value::Array(calls);
}

/// A stream chunk carrying `delta.tool_calls`.
pub fn tool_call_chunk(meta: &ResponseMeta, tool_calls: Value, first: bool) -> Value {
    let mut delta = json!({"tool_calls": tool_calls});
    if first {
        delta["role"] = json!("assistant");
        delta["content"] = Value::Null;
    }
    json!({
        "id": meta.id,
        "object": meta.object(true),
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": concat!("strata-", env!("CARGO_PKG_VERSION")),
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}],
    })
}
