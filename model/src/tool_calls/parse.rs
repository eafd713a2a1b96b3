//! Splitting a reply into content and tool calls, per family. The
//! expected strings in the tests are written from each family's published
//! format (Qwen's and Hermes' model cards, Meta's Llama 3.1 prompt format
//! page, Mistral's tokenizer docs), not from this server's output. The
//! channel formats (harmony, Gemma 4) have their own modules.

use serde_json::{Map, Value};

use super::{gemma4, harmony, ToolCallFormat};

/// One call: the function's name and its arguments as a JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: Value,
}

impl ToolCall {
    pub fn new(name: impl Into<String>, arguments: Value) -> Self {
        ToolCall {
            name: name.into(),
            arguments,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ParsedReply {
    /// The text outside the calls, trimmed.
    pub content: String,
    /// What a channel format marks as reasoning (harmony's `analysis`,
    /// Gemma 4's thoughts): not content.
    pub reasoning: String,
    pub calls: Vec<ToolCall>,
}

/// Parses a whole reply. Text that looks like a call but does not parse
/// stays content: a client sees what the model wrote.
pub fn parse(format: ToolCallFormat, text: &str) -> ParsedReply {
    let parsed = match format {
        ToolCallFormat::Hermes => hermes(text),
        ToolCallFormat::Llama3Json => llama3(text),
        ToolCallFormat::Mistral => mistral(text),
        ToolCallFormat::Harmony => harmony::parse(text),
        ToolCallFormat::Gemma4 => gemma4::parse(text),
    };
    parsed.unwrap_or_else(|| ParsedReply {
        content: text.to_string(),
        ..ParsedReply::default()
    })
}

/// A call object: `name` and its arguments under `arguments` or
/// `parameters` (given as an object, or as a string holding one).
fn call_of(v: &Value) -> Option<ToolCall> {
    let o = v.as_object()?;
    let name = o.get("name")?.as_str()?.to_string();
    let arguments = match o.get("arguments").or_else(|| o.get("parameters")) {
        None => Value::Object(Map::new()),
        Some(Value::String(s)) => serde_json::from_str(s).ok()?,
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => return None,
    };
    Some(ToolCall { name, arguments })
}

fn hermes(text: &str) -> Option<ParsedReply> {
    const OPEN: &str = "<tool_call>";
    const CLOSE: &str = "</tool_call>";
    let mut content = String::new();
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(OPEN) {
        content.push_str(&rest[..at]);
        let body = &rest[at + OPEN.len()..];
        // A reply cut short (max_tokens) may lack the closing tag.
        let (json, next) = match body.find(CLOSE) {
            Some(end) => (&body[..end], &body[end + CLOSE.len()..]),
            None => (body, ""),
        };
        calls.push(call_of(&serde_json::from_str(json.trim()).ok()?)?);
        rest = next;
    }
    content.push_str(rest);
    (!calls.is_empty()).then(|| ParsedReply {
        content: content.trim().to_string(),
        calls,
        ..ParsedReply::default()
    })
}

fn llama3(text: &str) -> Option<ParsedReply> {
    let body = text.trim();
    let body = body.strip_prefix("<|python_tag|>").unwrap_or(body).trim();
    if !body.starts_with('{') {
        return None;
    }
    // One object, or several separated by `;` (Llama 3.2's parallel calls).
    let mut calls = Vec::new();
    let mut rest = body;
    loop {
        let mut de = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        let v = de.next()?.ok()?;
        calls.push(call_of(&v)?);
        rest = rest[de.byte_offset()..].trim_start();
        if rest.is_empty() {
            break;
        }
        rest = rest.strip_prefix(';')?.trim_start();
    }
    Some(ParsedReply {
        calls,
        ..ParsedReply::default()
    })
}

fn mistral(text: &str) -> Option<ParsedReply> {
    const TAG: &str = "[TOOL_CALLS]";
    let at = text.find(TAG)?;
    let content = text[..at].trim().to_string();
    let mut calls = Vec::new();
    for part in text[at..].split(TAG).skip(1) {
        let part = part.trim();
        if part.starts_with('[') {
            // v3: a JSON array of call objects.
            let list: Vec<Value> = serde_json::from_str(part).ok()?;
            for v in &list {
                calls.push(call_of(v)?);
            }
        } else {
            // v11+: name[ARGS]{arguments}
            let (name, args) = part.split_once("[ARGS]")?;
            calls.push(ToolCall {
                name: name.trim().to_string(),
                arguments: serde_json::from_str(args.trim()).ok()?,
            });
        }
    }
    (!calls.is_empty()).then_some(ParsedReply {
        content,
        calls,
        ..ParsedReply::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(name: &str, arguments: serde_json::Value) -> ToolCall {
        ToolCall::new(name, arguments)
    }

    #[test]
    fn hermes_calls_from_qwen_model_card() {
        // Qwen2.5's function-calling docs, two parallel calls.
        let text = "<tool_call>\n{\"name\": \"get_current_temperature\", \"arguments\": {\"location\": \"San Francisco, CA, USA\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_temperature_date\", \"arguments\": {\"location\": \"San Francisco, CA, USA\", \"date\": \"2024-10-01\"}}\n</tool_call>";
        let r = parse(ToolCallFormat::Hermes, text);
        assert_eq!(r.content, "");
        assert_eq!(
            r.calls,
            vec![
                call(
                    "get_current_temperature",
                    json!({"location": "San Francisco, CA, USA"})
                ),
                call(
                    "get_temperature_date",
                    json!({"location": "San Francisco, CA, USA", "date": "2024-10-01"})
                ),
            ]
        );
    }

    #[test]
    fn hermes_keeps_text_around_calls_and_refuses_broken_json() {
        let r = parse(
            ToolCallFormat::Hermes,
            "Let me check.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>",
        );
        assert_eq!((r.content.as_str(), r.calls.len()), ("Let me check.", 1));
        let broken = "<tool_call>\n{\"name\": \"f\", \"argu\n</tool_call>";
        assert_eq!(parse(ToolCallFormat::Hermes, broken).content, broken);
        assert!(parse(ToolCallFormat::Hermes, "just text").calls.is_empty());
    }

    #[test]
    fn llama3_json_calls_from_meta_prompt_format() {
        // Llama 3.1's JSON-based tool calling, as Meta's docs show it.
        let text = "{\"name\": \"get_current_conditions\", \"parameters\": {\"location\": \"San Francisco, CA\", \"unit\": \"Fahrenheit\"}}";
        let r = parse(ToolCallFormat::Llama3Json, text);
        assert_eq!(
            r.calls,
            vec![call(
                "get_current_conditions",
                json!({"location": "San Francisco, CA", "unit": "Fahrenheit"})
            )]
        );
        let tagged = "<|python_tag|>{\"name\": \"a\", \"parameters\": {\"x\": 1}}; {\"name\": \"b\", \"parameters\": {}}";
        let r = parse(ToolCallFormat::Llama3Json, tagged);
        assert_eq!(
            r.calls,
            vec![call("a", json!({"x": 1})), call("b", json!({}))]
        );
        let prose = "The weather is nice.";
        assert_eq!(parse(ToolCallFormat::Llama3Json, prose).content, prose);
    }

    #[test]
    fn mistral_calls_in_both_generations_of_the_format() {
        // Mistral 7B v0.3's tokenizer docs.
        let v3 = "[TOOL_CALLS] [{\"name\": \"get_current_weather\", \"arguments\": {\"location\": \"Paris, France\", \"format\": \"celsius\"}}]";
        assert_eq!(
            parse(ToolCallFormat::Mistral, v3).calls,
            vec![call(
                "get_current_weather",
                json!({"location": "Paris, France", "format": "celsius"})
            )]
        );
        // Tekken v11+ (Mistral Small 3.2, Devstral).
        let v11 = "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}[TOOL_CALLS]get_time[ARGS]{}";
        assert_eq!(
            parse(ToolCallFormat::Mistral, v11).calls,
            vec![
                call("get_weather", json!({"city": "Paris"})),
                call("get_time", json!({}))
            ]
        );
    }

    #[test]
    fn arguments_given_as_a_string_are_decoded() {
        let text = "<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 2}\"}</tool_call>";
        assert_eq!(
            parse(ToolCallFormat::Hermes, text).calls,
            vec![call("f", json!({"a": 2}))]
        );
    }
}
