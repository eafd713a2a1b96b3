//! Tool calls on the reply side: text is shown as content until a call
//! may begin (the family's marker), then held to the end and parsed, so a
//! stream never shows half a call as content. In the channel formats
//! (harmony, Gemma 4) the reasoning is held the same way and the answer
//! after it streams again.

use serde_json::{json, Value};
use strata_model::tool_calls::{parse, ToolCall, ToolCallFormat};

pub struct ToolReply {
    format: ToolCallFormat,
    /// Text not shown: calls, reasoning, markup; parsed at the end.
    held: String,
    /// Text not yet looked at for markers.
    pending: String,
    /// A marker was seen (or the reply is calls only): hold everything
    /// until the format's content opener.
    holding: bool,
    calls_only: bool,
}

impl ToolReply {
    /// `calls_only`: the grammar makes the whole reply calls.
    pub fn new(format: ToolCallFormat, calls_only: bool) -> Self {
        ToolReply {
            format,
            held: String::new(),
            pending: String::new(),
            holding: calls_only,
            calls_only,
        }
    }

    /// Adds generated text; returns what may be shown as content now.
    pub fn push(&mut self, text: &str) -> String {
        self.pending.push_str(text);
        let mut shown = String::new();
        loop {
            if self.holding {
                let opener = self.format.content_opener().filter(|_| !self.calls_only);
                match opener.and_then(|o| self.pending.find(o).map(|at| at + o.len())) {
                    Some(end) => {
                        self.held.extend(self.pending.drain(..end));
                        self.holding = false;
                    }
                    None => {
                        // Keep a tail that may be the start of the opener.
                        let keep = opener.map_or(0, |o| partial_tail(&self.pending, &[o]));
                        let upto = self.pending.len() - keep;
                        self.held.extend(self.pending.drain(..upto));
                        return shown;
                    }
                }
            }
            let markers = self.format.call_markers();
            if let Some(at) = markers.iter().filter_map(|m| self.pending.find(m)).min() {
                shown.extend(self.pending.drain(..at));
                self.holding = true;
                continue;
            }
            let keep = partial_tail(&self.pending, markers);
            let upto = self.pending.len() - keep;
            shown.extend(self.pending.drain(..upto));
            return shown;
        }
    }

    /// The reply ended: the content not shown yet, and the calls.
    pub fn finish(mut self) -> (String, Vec<ToolCall>) {
        let tail = std::mem::take(&mut self.pending);
        let parsed = if self.holding {
            self.held.push_str(&tail);
            parse(self.format, &self.held)
        } else {
            let mut parsed = parse(self.format, &self.held);
            parsed.content.push_str(&tail);
            parsed
        };
        (parsed.content, parsed.calls)
    }
}

/// The length of the longest end of `text` that begins one of `markers`.
fn partial_tail(text: &str, markers: &[&str]) -> usize {
    text.char_indices()
        .map(|(i, _)| i)
        .find(|&i| markers.iter().any(|m| m.starts_with(&text[i..])))
        .map_or(0, |i| text.len() - i)
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
    fn harmony_reasoning_is_held_and_the_final_channel_streams() {
        let mut r = ToolReply::new(ToolCallFormat::Harmony, false);
        assert_eq!(r.push("<|channel|>analysis<|message|>Thinking"), "");
        assert_eq!(r.push("...<|end|><|start|>assistant<|channel|>fin"), "");
        // The space is held until it is not the start of ` to=functions.`.
        assert_eq!(r.push("al<|message|>It is "), "It is");
        assert_eq!(r.push("sunny."), " sunny.");
        assert_eq!(r.finish(), (String::new(), Vec::new()));
        let mut r = ToolReply::new(ToolCallFormat::Harmony, false);
        assert_eq!(
            r.push("<|channel|>commentary to=functions.f <|constrain|>json<|message|>"),
            ""
        );
        assert_eq!(r.push("{\"a\": 1}"), "");
        let (content, calls) = r.finish();
        assert_eq!((content.as_str(), calls[0].name.as_str()), ("", "f"));
    }

    #[test]
    fn gemma4_content_after_a_thought_streams_until_a_call() {
        let mut r = ToolReply::new(ToolCallFormat::Gemma4, false);
        assert_eq!(r.push("<|channel>thought\nhmm<chan"), "");
        assert_eq!(
            r.push("nel|>Checking. <|tool_call>call:f{a:1}<tool_call|>"),
            "Checking. "
        );
        let (content, calls) = r.finish();
        assert_eq!((content.as_str(), calls.len()), ("", 1));
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
