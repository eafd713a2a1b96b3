//! Tool calls on the reply side: text is shown as content until a call
//! may begin (the family's marker), then held to the end and parsed, so a
//! stream never shows half a call as content.

use serde_json::{json, Value};
use strata_model::tool_calls::{parse, ToolCall, ToolCallFormat};

pub struct ToolReply {
    format: ToolCallFormat,
    held: String,
    /// A marker was seen (or the reply is calls only): hold everything.
    holding: bool,
}

impl ToolReply {
    /// `calls_only`: the grammar makes the whole reply calls.
    pub fn new(format: ToolCallFormat, calls_only: bool) -> Self {
        ToolReply {
            format,
            held: String::new(),
            holding: calls_only,
        }
    }

    /// Adds generated text; returns what may be shown as content now.
    pub fn push(&mut self, text: &str) -> String {
        self.held.push_str(text);
        if self.holding {
            return String::new();
        }
        let markers = self.format.call_markers();
        if let Some(at) = markers.iter().filter_map(|m| self.held.find(m)).min() {
            self.holding = true;
            return self.held.drain(..at).collect();
        }
        // Keep back a tail that may be the start of a marker.
        let keep = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| markers.iter().any(|m| m.starts_with(&self.held[i..])))
            .unwrap_or(self.held.len());
        self.held.drain(..keep).collect()
    }

    /// The reply ended: the content not shown yet, and the calls.
    pub fn finish(self) -> (String, Vec<ToolCall>) {
        let parsed = parse(self.format, &self.held);
        (parsed.content, parsed.calls)
    }
}

/// A call as OpenAI returns it, with a fresh id; arguments as a JSON string.
pub fn call_json(call: &ToolCall) -> Value {
    json!({
        "id": format!("call_{:016x}", rand::random::<u64>()),
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments.to_string()},
    })
}

/// Stream deltas for one call, OpenAI's way: index, id, type and name
/// first, then the arguments in fragments.
pub fn call_deltas(index: usize, call: &Value) -> Vec<Value> {
    const FRAGMENT_CHARS: usize = 24;
    let mut out = vec![json!([{
        "index": index,
        "id": call["id"],
        "type": "function",
        "function": {"name": call["function"]["name"], "arguments": ""},
    }])];
    let args: Vec<char> = call["function"]["arguments"]
        .as_str()
        .unwrap_or("{}")
        .chars()
        .collect();
    for piece in args.chunks(FRAGMENT_CHARS) {
        let piece: String = piece.iter().collect();
        out.push(json!([{"index": index, "function": {"arguments": piece}}]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_before_a_call_streams_and_the_call_is_held() {
        let mut r = ToolReply::new(ToolCallFormat::Hermes, false);
        assert_eq!(r.push("Let me look. <tool"), "Let me look. ");
        assert_eq!(r.push("_call>\n{\"name\": \"f\", "), "");
        assert_eq!(r.push("\"arguments\": {\"a\": 1}}\n</tool_call>"), "");
        let (content, calls) = r.finish();
        assert_eq!(content, "");
        assert_eq!(calls[0].name, "f");
        let mut r = ToolReply::new(ToolCallFormat::Hermes, false);
        assert_eq!(r.push("<to"), "");
        assert_eq!(r.push("day"), "<today");
        assert_eq!(r.finish(), (String::new(), Vec::new()));
    }

    #[test]
    fn call_deltas_rebuild_the_arguments() {
        let call = call_json(&ToolCall {
            name: "f".into(),
            arguments: json!({"city": "Reykjavik", "days": [1, 2, 3], "unit": "celsius"}),
        });
        let deltas = call_deltas(0, &call);
        assert_eq!(deltas[0][0]["function"]["name"], "f");
        let args: String = deltas[1..]
            .iter()
            .map(|d| d[0]["function"]["arguments"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(args, call["function"]["arguments"].as_str().unwrap());
    }
}
