//! `POST /v1/chat/completions` and `/v1/completions`: validate, build the
//! prompt, submit it to the engine, and answer whole or as an SSE stream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use strata_proto::v1;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;

use super::error::ApiError;
use super::openai::{self, Endpoint, ResponseMeta};
use super::request::{ChatRequest, CompletionRequest, GenerationParams, PromptField};
use super::server::{AppState, Ready};
use super::structured;
use super::text::{Step, TextGeneration};
use super::tool_reply::{self, ToolReply};
use super::tools::{self, ToolChoice, ToolUse};
use crate::engine::{EngineError, GenerationRequest};
use strata_model::constraint::grammar;
use strata_model::tool_calls::ToolCallFormat;

/// llama.cpp's default window for repetition penalties.
const PENALTY_LAST_N: u32 = 64;

/// The JSON body, or an OpenAI-shaped error: 413 past the body limit, 408
/// when it does not arrive within the deadline (a client trickling bytes
/// or stalled mid-body would otherwise hold the connection forever).
async fn parse<T: DeserializeOwned>(st: &AppState, req: Request) -> Result<T, ApiError> {
    let deadline = st.body_read_timeout;
    let body = tokio::time::timeout(deadline, Bytes::from_request(req, &()))
        .await
        .map_err(|_| {
            ApiError::request_timeout(format!(
                "the request body did not arrive within {} s",
                deadline.as_secs_f64()
            ))
        })?
        .map_err(|e: BytesRejection| ApiError {
            status: e.status(),
            ..ApiError::invalid(None, format!("request body: {}", e.body_text()))
        })?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(None, format!("invalid request body: {e}")))
}

pub async fn chat_completions(
    State(st): State<Arc<AppState>>,
    req: Request,
) -> Result<Response, ApiError> {
    st.authorize(req.headers())?;
    // A bad request is a 400 whether or not the model is up yet.
    let req: ChatRequest = parse(&st, req).await?;
    let params = req.params()?;
    let tool_use = ToolUse::from_request(&req)?;
    let ready = st.ready_for(req.model.as_deref()).await?;
    let (format, renders_tools) = ToolCallFormat::of_template(ready.template.source());
    let messages =
        tools::template_messages(&req, req.text_messages()?, tool_use.as_ref(), renders_tools);
    let grammar = match tool_use.as_ref().and_then(|t| t.grammar(format)) {
        Some(g) => Some((g, "tools")),
        None => params
            .response_schema
            .as_ref()
            .map(|s| (structured::schema_grammar(s), "response_format")),
    };
    let reply = tool_use
        .as_ref()
        .map(|t| (format, t.choice != ToolChoice::Auto));
    let (template, tok, check) = (
        ready.template.clone(),
        ready.tokenizer.clone(),
        ready.grammars.clone(),
    );
    let (prompt, grammar) = off_runtime(move || {
        let text = tools::render(&template, &messages, tool_use.as_ref(), renders_tools)?;
        let mut prompt = tok.encode(&text, tok.add_bos(), true);
        // Templates that write the BOS text themselves (Gemma's) would get two.
        if prompt.len() >= 2 && tok.bos().is_some_and(|b| prompt[0] == b && prompt[1] == b) {
            prompt.remove(0);
        }
        let grammar = grammar
            .map(|(g, param)| check.check(&g, param).map(|()| grammar::to_wire(&g)))
            .transpose()?;
        Ok((prompt, grammar))
    })
    .await?;
    run(&ready, Endpoint::Chat, prompt, params, grammar, reply).await
}

pub async fn completions(
    State(st): State<Arc<AppState>>,
    req: Request,
) -> Result<Response, ApiError> {
    st.authorize(req.headers())?;
    let req: CompletionRequest = parse(&st, req).await?;
    let params = req.params()?;
    let ready = st.ready_for(req.model.as_deref()).await?;
    let tok = ready.tokenizer.clone();
    let prompt = off_runtime(move || match req.prompt {
        PromptField::Text(t) => Ok(tok.encode(&t, tok.add_bos(), true)),
        PromptField::Texts(v) if v.len() == 1 => Ok(tok.encode(&v[0], tok.add_bos(), true)),
        PromptField::Texts(v) => Err(ApiError::invalid(
            Some("prompt".to_string()),
            format!("one prompt per request is supported, got {}", v.len()),
        )),
        PromptField::Tokens(ids) => match ids.iter().find(|&&t| t as usize >= tok.vocab_size()) {
            Some(bad) => Err(ApiError::invalid(
                Some("prompt".to_string()),
                format!(
                    "token id {bad} is outside the vocabulary ({} tokens)",
                    tok.vocab_size()
                ),
            )),
            None => Ok(ids),
        },
    })
    .await?;
    let grammar = match &params.response_schema {
        None => None,
        Some(schema) => {
            let check = ready.grammars.clone();
            let g = structured::schema_grammar(schema);
            Some(
                off_runtime(move || {
                    check
                        .check(&g, "response_format")
                        .map(|()| grammar::to_wire(&g))
                })
                .await?,
            )
        }
    };
    run(&ready, Endpoint::Completion, prompt, params, grammar, None).await
}

/// Runs tokenizing and template rendering on the blocking pool: a prompt of
/// megabytes must not stall every stream's async thread.
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("preparing the prompt: {e}")))?
}

fn wire_sampling(
    p: &GenerationParams,
    grammar: Option<String>,
    prompt_tokens: usize,
) -> v1::SamplingParams {
    v1::SamplingParams {
        temperature: p.temperature,
        top_k: p.top_k.min(u32::MAX as usize) as u32,
        top_p: p.top_p,
        min_p: p.min_p,
        seed: p.seed.unwrap_or_else(rand::random),
        repetition_penalty: p.repetition_penalty,
        presence_penalty: p.presence_penalty,
        frequency_penalty: p.frequency_penalty,
        penalty_last_n: PENALTY_LAST_N,
        n_logprobs: p.logprobs.unwrap_or(0) as u32,
        logit_bias: p
            .logit_bias
            .iter()
            .map(|&(token_id, bias)| v1::LogitBias { token_id, bias })
            .collect(),
        grammar: grammar.unwrap_or_default(),
        grammar_start: prompt_tokens.min(u32::MAX as usize) as u32,
    }
}

fn engine_error(e: EngineError) -> ApiError {
    match e {
        EngineError::EmptyPrompt => ApiError::invalid(Some("prompt".to_string()), e.to_string()),
        EngineError::PromptTooLong { .. } => ApiError::context_length(e.to_string()),
        EngineError::Busy(_) | EngineError::Stopped(_) => ApiError::unavailable(e.to_string()),
    }
}

async fn run(
    ready: &Ready,
    endpoint: Endpoint,
    prompt: Vec<u32>,
    params: GenerationParams,
    grammar: Option<String>,
    tool_reply: Option<(ToolCallFormat, bool)>,
) -> Result<Response, ApiError> {
    let prompt_tokens = prompt.len();
    if grammar.is_some() && params.ignore_eos {
        return Err(ApiError::invalid(
            Some("ignore_eos".to_string()),
            "ignore_eos cannot be combined with response_format or a required tool call: the grammar ends the reply",
        ));
    }
    let vocab = ready.tokenizer.vocab_size();
    if let Some((t, _)) = params.logit_bias.iter().find(|(t, _)| *t as usize >= vocab) {
        return Err(ApiError::invalid(
            Some("logit_bias".to_string()),
            format!("logit_bias names token {t}, outside the vocabulary ({vocab} tokens)"),
        ));
    }
    let generation = ready
        .engine
        .submit(GenerationRequest {
            prompt,
            sampling: wire_sampling(&params, grammar, prompt_tokens),
            max_tokens: params.max_tokens.unwrap_or(usize::MAX),
            ignore_eos: params.ignore_eos,
        })
        .map_err(engine_error)?;
    let meta = ResponseMeta::new(endpoint, generation.seq_id(), &ready.name);
    let span = tracing::info_span!("request", id = %meta.id, seq = generation.seq_id());
    // A token the tool-call parser reads that is a control token
    // (Mistral's `[TOOL_CALLS]`, Gemma 4's `<|tool_call>`) stays in the text.
    let tok = &ready.tokenizer;
    let markers: Vec<u32> = tool_reply
        .iter()
        .flat_map(|(format, _)| format.parsed_tokens())
        .filter_map(|m| tok.token_id(m))
        .filter(|&id| tok.is_control(id))
        .collect();
    let text = TextGeneration::new(
        generation,
        ready.tokenizer.clone(),
        params.stop.clone(),
        params.logprobs.is_some(),
    )
    .show_controls(markers);
    let tool_reply = tool_reply.map(|(format, calls_only)| ToolReply::new(format, calls_only));
    if params.stream {
        return Ok(stream(
            meta,
            text,
            prompt_tokens,
            params.include_usage,
            tool_reply,
            span,
        ));
    }
    whole(
        meta,
        text,
        prompt_tokens,
        params.logprobs.is_some(),
        tool_reply,
    )
    .instrument(span)
    .await
}

async fn whole(
    meta: ResponseMeta,
    mut gen: TextGeneration,
    prompt_tokens: usize,
    logprobs: bool,
    tool_reply: Option<ToolReply>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let mut text = String::new();
    let mut tokens = Vec::new();
    loop {
        match gen.next().await {
            Some(Step::Text {
                text: t,
                tokens: tk,
            }) => {
                text.push_str(&t);
                tokens.extend(tk);
            }
            Some(Step::Finished {
                reason,
                completion_tokens,
                cached_tokens,
            }) => {
                log_done(prompt_tokens, completion_tokens, cached_tokens, started);
                let mut calls = Vec::new();
                if let Some(mut r) = tool_reply {
                    let shown = r.push(&text);
                    let (rest, parsed) = r.finish();
                    text = shown + &rest;
                    calls = parsed.iter().map(tool_reply::call_json).collect();
                }
                let finish = if calls.is_empty() {
                    reason.as_str()
                } else {
                    "tool_calls"
                };
                let mut body = openai::response(
                    &meta,
                    &text,
                    logprobs.then_some(&tokens[..]),
                    finish,
                    openai::usage(prompt_tokens, completion_tokens, cached_tokens),
                );
                if !calls.is_empty() {
                    openai::add_tool_calls(&mut body, calls);
                }
                return Ok(axum::Json(body).into_response());
            }
            Some(Step::Failed(why)) => {
                return Err(ApiError::internal(format!("generation failed: {why}")))
            }
            Some(Step::Unavailable(why)) => return Err(ApiError::unavailable(why)),
            None => return Err(ApiError::internal("generation ended without finishing")),
        }
    }
}

fn log_done(
    prompt_tokens: usize,
    completion_tokens: usize,
    cached_tokens: usize,
    started: Instant,
) {
    let s = started.elapsed().as_secs_f64();
    tracing::info!(
        "{prompt_tokens} prompt ({cached_tokens} cached) + {completion_tokens} generated tokens in {s:.2}s ({:.1} tokens/s)",
        completion_tokens as f64 / s.max(1e-9)
    );
}

/// Server-sent events: chunks as text arrives, the final chunk with its
/// finish reason, usage when asked, then `[DONE]`. A client that goes away
/// ends the task at its next send, which drops (cancels) the generation.
fn stream(
    meta: ResponseMeta,
    mut gen: TextGeneration,
    prompt_tokens: usize,
    include_usage: bool,
    mut tool_reply: Option<ToolReply>,
    span: tracing::Span,
) -> Response {
    let (tx, rx) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    let json_event = |v: serde_json::Value| Ok(SseEvent::default().data(v.to_string()));
    tokio::spawn(
        async move {
            let started = Instant::now();
            let mut first = true;
            let mut offset = 0usize;
            loop {
                let event = match gen.next().await {
                    Some(Step::Text { text, tokens }) => {
                        let text = match tool_reply.as_mut() {
                            Some(r) => r.push(&text),
                            None => text,
                        };
                        if text.is_empty() && tokens.is_empty() {
                            continue;
                        }
                        let logprobs = (!tokens.is_empty()).then_some(&tokens[..]);
                        let c = openai::chunk(&meta, &text, first, logprobs, offset, None);
                        first = false;
                        offset += text.chars().count();
                        json_event(c)
                    }
                    Some(Step::Finished {
                        reason,
                        completion_tokens,
                        cached_tokens,
                    }) => {
                        log_done(prompt_tokens, completion_tokens, cached_tokens, started);
                        let mut finish = reason.as_str();
                        if let Some(r) = tool_reply.take() {
                            let (rest, calls) = r.finish();
                            let mut events = Vec::new();
                            if !rest.is_empty() {
                                events.push(openai::chunk(&meta, &rest, first, None, offset, None));
                                first = false;
                            }
                            for (i, call) in calls.iter().enumerate() {
                                let call = tool_reply::call_json(call);
                                for d in tool_reply::call_deltas(i, &call) {
                                    events.push(openai::tool_call_chunk(&meta, d, first));
                                    first = false;
                                }
                                finish = "tool_calls";
                            }
                            for e in events {
                                if tx.send(json_event(e)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        if tx
                            .send(json_event(openai::chunk(
                                &meta,
                                "",
                                first,
                                None,
                                offset,
                                Some(finish),
                            )))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        if include_usage {
                            let u = openai::usage_chunk(
                                &meta,
                                openai::usage(prompt_tokens, completion_tokens, cached_tokens),
                            );
                            if tx.send(json_event(u)).await.is_err() {
                                return;
                            }
                        }
                        break;
                    }
                    Some(Step::Failed(why)) => {
                        let e = ApiError::internal(format!("generation failed: {why}"));
                        tracing::warn!("{}", e.message);
                        let _ = tx.send(Ok(SseEvent::default().data(e.json()))).await;
                        break;
                    }
                    Some(Step::Unavailable(why)) => {
                        let e = ApiError::unavailable(why);
                        tracing::warn!("{}", e.message);
                        let _ = tx.send(Ok(SseEvent::default().data(e.json()))).await;
                        break;
                    }
                    None => break,
                };
                if tx.send(event).await.is_err() {
                    tracing::info!("client went away: cancelling");
                    return;
                }
            }
            let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
        }
        .instrument(span),
    );
    Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}
