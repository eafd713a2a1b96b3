//! From sampled tokens to text a client sees: streaming detokenization,
//! end-of-generation tokens kept out of the text, stop strings, and the
//! per-token log-probabilities when asked.

use std::collections::VecDeque;
use std::sync::Arc;

use strata_model::tokenizer::{TextStream, Tokenizer};

use crate::engine::{Event, FinishReason, Generation};

/// A generated token as the API reports it.
#[derive(Debug, Clone)]
pub struct TokenOut {
    pub text: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    /// The most likely tokens at this step: (text, bytes, log-prob).
    pub top: Vec<(String, Vec<u8>, f32)>,
}

/// What a generation produces next.
#[derive(Debug, Clone)]
pub enum Step {
    /// New text, and the tokens it came with when log-probs were asked.
    Text { text: String, tokens: Vec<TokenOut> },
    Finished {
        reason: FinishReason,
        completion_tokens: usize,
        /// Prompt tokens found in the prefix cache (not computed).
        cached_tokens: usize,
    },
    /// The stage failed the batch (a 500).
    Failed(String),
    /// The pool cannot serve the model now (a 503).
    Unavailable(String),
}

pub struct TextGeneration {
    generation: Option<Generation>,
    tokenizer: Arc<Tokenizer>,
    text: TextStream,
    stop: super::stop::StopMatcher,
    logprobs: bool,
    tokens: Vec<TokenOut>,
    completion_tokens: usize,
    cached_tokens: usize,
    out: VecDeque<Step>,
    /// Control tokens whose text the reply keeps (Mistral's `[TOOL_CALLS]`:
    /// the tool-call parser needs it).
    shown_controls: Vec<u32>,
}

impl TextGeneration {
    pub fn new(
        generation: Generation,
        tokenizer: Arc<Tokenizer>,
        stops: Vec<String>,
        logprobs: bool,
    ) -> Self {
        TextGeneration {
            generation: Some(generation),
            tokenizer,
            text: TextStream::new(),
            stop: super::stop::StopMatcher::new(stops),
            logprobs,
            tokens: Vec::new(),
            completion_tokens: 0,
            cached_tokens: 0,
            out: VecDeque::new(),
            shown_controls: Vec::new(),
        }
    }

    /// Keeps the text of these control tokens in the reply.
    pub fn show_controls(mut self, ids: Vec<u32>) -> Self {
        self.shown_controls = ids;
        self
    }

    /// The next step; `None` after `Finished` or `Failed`.
    pub async fn next(&mut self) -> Option<Step> {
        loop {
            if let Some(s) = self.out.pop_front() {
                return Some(s);
            }
            let event = self.generation.as_mut()?.next().await;
            match event {
                Some(Event::Token(t)) => self.on_token(t),
                Some(Event::Cached(n)) => self.cached_tokens = n,
                Some(Event::Done(reason)) => {
                    let rest = self.text.finish();
                    let (mut text, _) = self.stop.push(&rest);
                    text.push_str(&self.stop.finish());
                    self.finish(text, reason);
                }
                Some(Event::Failed(why)) => {
                    self.generation = None;
                    return Some(Step::Failed(why));
                }
                Some(Event::Unavailable(why)) => {
                    self.generation = None;
                    return Some(Step::Unavailable(why));
                }
                None => return None,
            }
        }
    }

    fn on_token(&mut self, t: strata_proto::v1::SampledToken) {
        self.completion_tokens += 1;
        if self.logprobs {
            let tok = &self.tokenizer;
            let piece = |id: u32| {
                (
                    String::from_utf8_lossy(tok.piece(id)).into_owned(),
                    tok.piece(id).to_vec(),
                )
            };
            let (text, bytes) = piece(t.token_id);
            let top = t
                .top_logprobs
                .iter()
                .map(|c| {
                    let (text, bytes) = piece(c.token_id);
                    (text, bytes, c.logprob)
                })
                .collect();
            self.tokens.push(TokenOut {
                text,
                bytes,
                logprob: t.logprob,
                top,
            });
        }
        if self.tokenizer.is_end_of_generation(t.token_id) {
            return;
        }
        let piece = if self.shown_controls.contains(&t.token_id) {
            self.text.push_bytes(self.tokenizer.token_bytes(t.token_id))
        } else {
            self.text.push_token(&self.tokenizer, t.token_id)
        };
        let (text, stopped) = self.stop.push(&piece);
        if stopped {
            // Dropping the generation cancels the sequence on every stage.
            self.finish(text, FinishReason::Stop);
        } else if !text.is_empty() {
            self.out.push_back(Step::Text {
                text,
                tokens: std::mem::take(&mut self.tokens),
            });
        }
    }

    fn finish(&mut self, text: String, reason: FinishReason) {
        if !text.is_empty() || !self.tokens.is_empty() {
            self.out.push_back(Step::Text {
                text,
                tokens: std::mem::take(&mut self.tokens),
            });
        }
        self.out.push_back(Step::Finished {
            reason,
            completion_tokens: self.completion_tokens,
            cached_tokens: self.cached_tokens,
        });
        self.generation = None;
    }
}
