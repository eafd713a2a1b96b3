//! OpenAI request bodies and their validation into [`GenerationParams`].

use serde::Deserialize;

use super::error::ApiError;

/// `stop`: one string or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

/// Chat message content: a string, or an array of parts (text only).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ContentField {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessageIn {
    pub role: String,
    #[serde(default)]
    pub content: Option<ContentField>,
    /// An assistant turn's calls, as OpenAI returned them.
    #[serde(default)]
    pub tool_calls: Option<Vec<serde_json::Value>>,
    /// A `tool` turn: the call it answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Fields shared by both endpoints. Extensions beyond OpenAI (top_k,
/// min_p, repeat_penalty) follow llama-server's names.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SamplingFields {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub seed: Option<u64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    #[serde(alias = "repeat_penalty")]
    pub repetition_penalty: Option<f32>,
    pub stop: Option<StopField>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub n: Option<i64>,
    /// llama-server's: keep generating past end-of-generation tokens.
    #[serde(default)]
    pub ignore_eos: bool,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub response_format: Option<serde_json::Value>,
    pub logit_bias: Option<serde_json::Value>,
    /// Features not served yet, refused with a 400 rather than ignored
    /// (a client asking for a tool call must not get plain text).
    #[serde(flatten)]
    pub unsupported: Unsupported,
}

/// Request fields whose meaning we cannot honour yet.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Unsupported {
    functions: Option<serde_json::Value>,
    function_call: Option<serde_json::Value>,
    grammar: Option<serde_json::Value>,
    json_schema: Option<serde_json::Value>,
    suffix: Option<serde_json::Value>,
    best_of: Option<serde_json::Value>,
}

impl Unsupported {
    /// The first field set to something we would have to ignore.
    fn check(&self) -> Result<(), ApiError> {
        use serde_json::Value;
        let empty = |v: &Value| match v {
            Value::Null => true,
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
            _ => false,
        };
        // (name, value, whether a value is one we can honour by ignoring it)
        type Field<'a> = (&'a str, &'a Option<Value>, fn(&Value) -> bool);
        let fields: [Field; 6] = [
            ("functions", &self.functions, |_| false),
            ("function_call", &self.function_call, |v| {
                v == "none" || v == "auto"
            }),
            ("grammar", &self.grammar, |_| false),
            ("json_schema", &self.json_schema, |_| false),
            ("suffix", &self.suffix, |v| v == ""),
            ("best_of", &self.best_of, |v| v == 1),
        ];
        for (name, value, harmless) in fields {
            if let Some(v) = value.as_ref().filter(|v| !empty(v) && !harmless(v)) {
                let shown: String = v.to_string().chars().take(80).collect();
                return Err(ApiError::invalid(
                    Some(name.to_string()),
                    format!("{name} is not supported by this server yet (got {shown}); without it the reply would silently ignore what was asked"),
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<ChatMessageIn>,
    #[serde(default)]
    pub logprobs: bool,
    pub top_logprobs: Option<i64>,
    #[serde(default)]
    pub tools: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    pub tool_choice: Option<serde_json::Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

/// `prompt`: a string or an array of one string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub prompt: PromptField,
    /// Legacy completions: number of top log-probabilities per token.
    pub logprobs: Option<i64>,
    #[serde(default)]
    pub echo: bool,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

/// A validated request, independent of the endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub min_p: f32,
    pub seed: Option<u64>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub repetition_penalty: f32,
    pub stop: Vec<String>,
    /// Top log-probabilities per generated token, when asked.
    pub logprobs: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
    /// (token id, bias); ids are checked against the vocabulary later.
    pub logit_bias: Vec<(u32, f32)>,
    /// The JSON schema the reply must follow (`response_format`).
    pub response_schema: Option<serde_json::Value>,
}

/// OpenAI caps top_logprobs at 20.
pub const MAX_TOP_LOGPROBS: usize = 20;
const MAX_STOP_STRINGS: usize = 16;

fn range(param: &str, v: Option<f32>, lo: f32, hi: f32, default: f32) -> Result<f32, ApiError> {
    match v {
        None => Ok(default),
        Some(x) if x.is_finite() && (lo..=hi).contains(&x) => Ok(x),
        Some(x) => Err(ApiError::invalid(
            Some(param.to_string()),
            format!("{param} must be between {lo} and {hi}, got {x}"),
        )),
    }
}

impl SamplingFields {
    /// Validates the shared fields; `logprobs` comes from the endpoint.
    pub fn validate(&self, logprobs: Option<usize>) -> Result<GenerationParams, ApiError> {
        self.unsupported.check()?;
        if let Some(n) = self.n {
            if n != 1 {
                return Err(ApiError::invalid(
                    Some("n".to_string()),
                    format!("only n=1 is supported, got {n}"),
                ));
            }
        }
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            None => None,
            Some(m) if m >= 1 => Some(m as usize),
            Some(m) => {
                return Err(ApiError::invalid(
                    Some("max_tokens".to_string()),
                    format!("max_tokens must be at least 1, got {m}"),
                ))
            }
        };
        let top_k = match self.top_k {
            None => 40,
            Some(k) if k >= 0 => k as usize,
            Some(k) => {
                return Err(ApiError::invalid(
                    Some("top_k".to_string()),
                    format!("top_k must be >= 0, got {k}"),
                ))
            }
        };
        let stop = match &self.stop {
            None => Vec::new(),
            Some(StopField::One(s)) => vec![s.clone()],
            Some(StopField::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOP_STRINGS || stop.iter().any(String::is_empty) {
            return Err(ApiError::invalid(
                Some("stop".to_string()),
                format!("stop takes up to {MAX_STOP_STRINGS} non-empty strings"),
            ));
        }
        Ok(GenerationParams {
            max_tokens,
            temperature: range("temperature", self.temperature, 0.0, 2.0, 0.8)?,
            top_p: range("top_p", self.top_p, 0.0, 1.0, 0.95)?,
            top_k,
            min_p: range("min_p", self.min_p, 0.0, 1.0, 0.05)?,
            seed: self.seed,
            presence_penalty: range("presence_penalty", self.presence_penalty, -2.0, 2.0, 0.0)?,
            frequency_penalty: range("frequency_penalty", self.frequency_penalty, -2.0, 2.0, 0.0)?,
            repetition_penalty: range(
                "repetition_penalty",
                self.repetition_penalty,
                0.0,
                10.0,
                1.0,
            )?,
            stop,
            logprobs,
            stream: self.stream,
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
            ignore_eos: self.ignore_eos,
            logit_bias: super::structured::logit_bias(self.logit_bias.as_ref())?,
            response_schema: super::structured::response_schema(self.response_format.as_ref())?,
        })
    }
}

fn top_logprobs(param: &str, n: Option<i64>) -> Result<usize, ApiError> {
    match n {
        None => Ok(0),
        Some(n) if (0..=MAX_TOP_LOGPROBS as i64).contains(&n) => Ok(n as usize),
        Some(n) => Err(ApiError::invalid(
            Some(param.to_string()),
            format!("{param} must be between 0 and {MAX_TOP_LOGPROBS}, got {n}"),
        )),
    }
}

impl ChatRequest {
    pub fn params(&self) -> Result<GenerationParams, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid(
                Some("messages".to_string()),
                "messages must not be empty",
            ));
        }
        let n = top_logprobs("top_logprobs", self.top_logprobs)?;
        self.sampling.validate(self.logprobs.then_some(n))
    }

    /// Messages as (role, text): text parts joined; other parts refused.
    pub fn text_messages(&self) -> Result<Vec<(String, String)>, ApiError> {
        self.messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let text = match &m.content {
                    None => String::new(),
                    Some(ContentField::Text(t)) => t.clone(),
                    Some(ContentField::Parts(parts)) => {
                        let mut text = String::new();
                        for p in parts {
                            match (p.kind.as_str(), &p.text) {
                                ("text", Some(t)) => text.push_str(t),
                                (kind, _) => {
                                    return Err(ApiError::invalid(
                                        Some(format!("messages[{i}].content")),
                                        format!("content part of type {kind:?} is not supported (text only)"),
                                    ))
                                }
                            }
                        }
                        text
                    }
                };
                Ok((m.role.clone(), text))
            })
            .collect()
    }
}

impl CompletionRequest {
    pub fn params(&self) -> Result<GenerationParams, ApiError> {
        if self.echo {
            return Err(ApiError::invalid(
                Some("echo".to_string()),
                "echo is not supported",
            ));
        }
        let n = self
            .logprobs
            .map(|n| top_logprobs("logprobs", Some(n)))
            .transpose()?;
        self.sampling.validate(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_we_would_ignore_are_refused_by_name() {
        let chat = |extra: &str| -> Result<GenerationParams, ApiError> {
            let body = format!(r#"{{"messages":[{{"role":"user","content":"hi"}}]{extra}}}"#);
            serde_json::from_str::<ChatRequest>(&body).unwrap().params()
        };
        for (extra, param) in [
            (r#","response_format":{"type":"xml"}"#, "response_format"),
            (r#","logit_bias":{"x":-100}"#, "logit_bias"),
            (r#","functions":[{"name":"f"}]"#, "functions"),
        ] {
            let e = chat(extra).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{extra}");
            assert_eq!(e.param.as_deref(), Some(param), "{extra}");
        }
        // What clients send by default stays accepted.
        for extra in [
            r#","tools":[]"#,
            r#","tool_choice":"auto""#,
            r#","response_format":{"type":"text"}"#,
            r#","logit_bias":{}"#,
            r#","logit_bias":null"#,
            r#","logit_bias":{"42":-100}"#,
            r#","response_format":{"type":"json_object"}"#,
            r#","tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"required""#,
        ] {
            assert!(chat(extra).is_ok(), "{extra}");
        }
    }

    #[test]
    fn chat_defaults_and_validation() {
        let r: ChatRequest =
            serde_json::from_str(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#)
                .unwrap();
        let p = r.params().unwrap();
        assert_eq!(
            (p.temperature, p.top_k, p.max_tokens, p.logprobs),
            (0.8, 40, None, None)
        );
        let r: ChatRequest = serde_json::from_str(
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],
                "temperature":0,"stop":"\n","logprobs":true,"top_logprobs":3,"max_tokens":5,"stream":true,
                "stream_options":{"include_usage":true}}"#,
        )
        .unwrap();
        let p = r.params().unwrap();
        assert_eq!(p.stop, vec!["\n".to_string()]);
        assert_eq!(
            (p.logprobs, p.max_tokens, p.stream, p.include_usage),
            (Some(3), Some(5), true, true)
        );
        assert_eq!(
            r.text_messages().unwrap(),
            vec![("user".to_string(), "ab".to_string())]
        );
    }

    #[test]
    fn bad_values_name_their_parameter() {
        for (body, param) in [
            (
                r#"{"messages":[{"role":"user","content":"x"}],"temperature":3}"#,
                "temperature",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
                "max_tokens",
            ),
            (r#"{"messages":[{"role":"user","content":"x"}],"n":2}"#, "n"),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"logprobs":true,"top_logprobs":50}"#,
                "top_logprobs",
            ),
            (r#"{"messages":[]}"#, "messages"),
        ] {
            let r: ChatRequest = serde_json::from_str(body).unwrap();
            let e = r.params().unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
            assert!(e.json().contains("invalid_request_error"));
        }
        let r: ChatRequest = serde_json::from_str(
            r#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
        )
        .unwrap();
        assert!(r.text_messages().unwrap_err().message.contains("image_url"));
    }

    #[test]
    fn completion_prompt_forms() {
        let r: CompletionRequest =
            serde_json::from_str(r#"{"prompt":"abc","logprobs":2}"#).unwrap();
        assert!(matches!(r.prompt, PromptField::Text(_)));
        assert_eq!(r.params().unwrap().logprobs, Some(2));
        let r: CompletionRequest = serde_json::from_str(r#"{"prompt":[1,2,3]}"#).unwrap();
        assert!(matches!(r.prompt, PromptField::Tokens(_)));
        let r: CompletionRequest = serde_json::from_str(r#"{"prompt":"a","echo":true}"#).unwrap();
        assert_eq!(r.params().unwrap_err().param.as_deref(), Some("echo"));
    }
}
