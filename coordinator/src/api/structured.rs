//! Structured output: `response_format` and `logit_bias` validated into
//! what the last stage runs, and the request-time grammar check that turns
//! a schema llguidance cannot honour into a 400 naming the feature.

use std::sync::{Arc, OnceLock};

use serde_json::{json, Value};
use strata_model::constraint::{grammar, GrammarCompiler, TopLevelGrammar};
use strata_model::tokenizer::Tokenizer;

use super::error::ApiError;

/// OpenAI's bound on a logit bias.
const MAX_LOGIT_BIAS: f32 = 100.0;
/// OpenAI allows up to 300 biased tokens.
const MAX_LOGIT_BIAS_TOKENS: usize = 300;

/// The JSON schema `response_format` asks the reply to follow, if any:
/// `json_object` is any object; `json_schema` its `schema` (llama-server
/// also takes a `schema` beside `json_object`).
pub fn response_schema(format: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let Some(f) = format.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    let bad = |why: String| ApiError::invalid(Some("response_format".to_string()), why);
    match f["type"].as_str() {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(
            f.get("schema")
                .cloned()
                .unwrap_or(json!({"type": "object"})),
        )),
        Some("json_schema") => {
            let spec = f
                .get("json_schema")
                .filter(|s| s.is_object())
                .ok_or_else(|| {
                    bad("response_format.json_schema must be an object with a schema".into())
                })?;
            match spec.get("schema") {
                None => Ok(Some(json!({"type": "object"}))),
                Some(s @ (Value::Object(_) | Value::Bool(_))) => Ok(Some(s.clone())),
                Some(other) => Err(bad(format!(
                    "response_format.json_schema.schema must be a JSON schema object, got {other}"
                ))),
            }
        }
        _ => Err(bad(format!(
            "response_format.type must be text, json_object or json_schema, got {}",
            f["type"]
        ))),
    }
}

/// `logit_bias`: token id (as a string key) to a bias in [-100, 100].
pub fn logit_bias(field: Option<&Value>) -> Result<Vec<(u32, f32)>, ApiError> {
    let bad = |why: String| ApiError::invalid(Some("logit_bias".to_string()), why);
    let Some(map) = field.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let map = map.as_object().ok_or_else(|| {
        bad(format!(
            "logit_bias must map token ids to numbers, got {map}"
        ))
    })?;
    if map.len() > MAX_LOGIT_BIAS_TOKENS {
        return Err(bad(format!(
            "logit_bias takes at most {MAX_LOGIT_BIAS_TOKENS} tokens, got {}",
            map.len()
        )));
    }
    map.iter()
        .map(|(k, v)| {
            let token: u32 = k
                .parse()
                .map_err(|_| bad(format!("logit_bias key {k:?} is not a token id")))?;
            match v.as_f64() {
                Some(b) if (-MAX_LOGIT_BIAS as f64..=MAX_LOGIT_BIAS as f64).contains(&b) => {
                    Ok((token, b as f32))
                }
                _ => Err(bad(format!(
                    "logit_bias for token {token} must be a number in [-100, 100], got {v}"
                ))),
            }
        })
        .collect()
}

/// Compiles grammars against the served model's vocabulary to refuse bad
/// ones before they reach a worker. The compiler is built on first use.
pub struct GrammarCheck {
    tokenizer: Arc<Tokenizer>,
    compiler: OnceLock<Result<GrammarCompiler, String>>,
}

impl GrammarCheck {
    pub fn new(tokenizer: Arc<Tokenizer>) -> Self {
        GrammarCheck {
            tokenizer,
            compiler: OnceLock::new(),
        }
    }

    /// Blocking (compiling a large schema takes milliseconds): call it off
    /// the async threads. `param` names the request field it came from.
    pub fn check(&self, g: &TopLevelGrammar, param: &str) -> Result<(), ApiError> {
        let compiler = self
            .compiler
            .get_or_init(|| GrammarCompiler::new(&self.tokenizer).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| ApiError::internal(e.clone()))?;
        compiler.compile(g, 0).map(|_| ()).map_err(|e| {
            ApiError::invalid(
                Some(param.to_string()),
                format!("{param}: the schema cannot be enforced: {e}"),
            )
        })
    }
}

/// The grammar for a JSON schema from `response_format`.
pub fn schema_grammar(schema: &Value) -> TopLevelGrammar {
    grammar::json_schema(schema.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_formats() {
        assert_eq!(response_schema(None).unwrap(), None);
        assert_eq!(
            response_schema(Some(&json!({"type": "text"}))).unwrap(),
            None
        );
        assert_eq!(
            response_schema(Some(&json!({"type": "json_object"}))).unwrap(),
            Some(json!({"type": "object"}))
        );
        let s = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        let f = json!({"type": "json_schema", "json_schema": {"name": "x", "strict": true, "schema": s}});
        assert_eq!(response_schema(Some(&f)).unwrap(), Some(s));
        for bad in [
            json!({"type": "yaml"}),
            json!({"type": "json_schema", "json_schema": {"schema": 3}}),
        ] {
            let e = response_schema(Some(&bad)).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("response_format"), "{bad}");
        }
    }

    #[test]
    fn logit_bias_bounds_and_keys() {
        assert_eq!(
            logit_bias(Some(&json!({"42": -100, "7": 2.5})))
                .unwrap()
                .len(),
            2
        );
        for bad in [
            json!({"x": 1}),
            json!({"1": 101}),
            json!({"1": "a"}),
            json!([1]),
        ] {
            assert_eq!(
                logit_bias(Some(&bad)).unwrap_err().param.as_deref(),
                Some("logit_bias"),
                "{bad}"
            );
        }
    }
}
