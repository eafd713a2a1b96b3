//! Gemma 4's replies: thoughts in `<|channel>thought ..<channel|>`, calls
//! as `<|tool_call>call:NAME{..}<tool_call|>` with the arguments in
//! Gemma's notation (bare keys, strings between `<|"|>` marks), as
//! llama.cpp's Gemma 4 parser (common/parsers/gemma4.cpp) reads them.

use serde_json::{Map, Value};

use super::parse::{ParsedReply, ToolCall};

const THOUGHT_OPEN: &str = "<|channel>";
const THOUGHT_CLOSE: &str = "<channel|>";
const CALL_OPEN: &str = "<|tool_call>call:";
const CALL_CLOSE: &str = "<tool_call|>";
const QUOTE: &str = "<|\"|>";

/// `None` when the text has no Gemma 4 markup or a call does not parse.
pub(super) fn parse(text: &str) -> Option<ParsedReply> {
    if ![THOUGHT_OPEN, THOUGHT_CLOSE, CALL_OPEN]
        .iter()
        .any(|m| text.contains(m))
    {
        return None;
    }
    let mut reply = ParsedReply::default();
    let mut content = String::new();
    let mut rest = text;
    loop {
        let next = [THOUGHT_OPEN, THOUGHT_CLOSE, CALL_OPEN]
            .iter()
            .filter_map(|m| rest.find(m).map(|at| (at, *m)))
            .min();
        let Some((at, marker)) = next else {
            content.push_str(rest);
            break;
        };
        content.push_str(&rest[..at]);
        rest = &rest[at + marker.len()..];
        match marker {
            THOUGHT_OPEN => {
                let (thought, after) = split_at_marker(rest, THOUGHT_CLOSE);
                let thought = thought.strip_prefix("thought").unwrap_or(thought).trim();
                if !thought.is_empty() {
                    reply.reasoning.push_str(thought);
                }
                rest = after;
            }
            // A stray end of a thought (Gemma 4 writes one at times).
            THOUGHT_CLOSE => {}
            _ => {
                let (call, after) = split_at_marker(rest, CALL_CLOSE);
                reply.calls.push(call_of(call)?);
                rest = after;
            }
        }
    }
    reply.content = content.trim().to_string();
    Some(reply)
}

/// The text before `marker` and after it; all of it when a reply cut short
/// lacks the marker.
fn split_at_marker<'a>(text: &'a str, marker: &str) -> (&'a str, &'a str) {
    match text.find(marker) {
        Some(at) => (&text[..at], &text[at + marker.len()..]),
        None => (text, ""),
    }
}

/// `NAME{..}`.
fn call_of(text: &str) -> Option<ToolCall> {
    let brace = text.find('{')?;
    let name = text[..brace].trim();
    let mut reader = Reader {
        rest: &text[brace..],
    };
    let arguments = reader.value()?;
    (!name.is_empty() && arguments.is_object() && reader.rest.trim().is_empty()).then(|| ToolCall {
        name: name.to_string(),
        arguments,
    })
}

/// A reader of Gemma's argument notation, one value at a time.
struct Reader<'a> {
    rest: &'a str,
}

impl Reader<'_> {
    fn skip_space(&mut self) {
        self.rest = self.rest.trim_start();
    }

    fn eat(&mut self, s: &str) -> bool {
        self.skip_space();
        match self.rest.strip_prefix(s) {
            Some(r) => {
                self.rest = r;
                true
            }
            None => false,
        }
    }

    fn value(&mut self) -> Option<Value> {
        self.skip_space();
        if self.eat(QUOTE) {
            let (s, after) = self.rest.split_once(QUOTE)?;
            self.rest = after;
            Some(Value::String(s.to_string()))
        } else if self.eat("{") {
            let mut map = Map::new();
            if self.eat("}") {
                return Some(Value::Object(map));
            }
            loop {
                self.skip_space();
                let colon = self.rest.find([':', '}'])?;
                let key = self.rest[..colon].trim().to_string();
                self.rest = self.rest[colon..].strip_prefix(':')?;
                map.insert(key, self.value()?);
                if self.eat("}") {
                    return Some(Value::Object(map));
                }
                if !self.eat(",") {
                    return None;
                }
            }
        } else if self.eat("[") {
            let mut list = Vec::new();
            if self.eat("]") {
                return Some(Value::Array(list));
            }
            loop {
                list.push(self.value()?);
                if self.eat("]") {
                    return Some(Value::Array(list));
                }
                if !self.eat(",") {
                    return None;
                }
            }
        } else {
            // A number, true, false or null: JSON up to the next delimiter.
            let end = self.rest.find([',', '}', ']']).unwrap_or(self.rest.len());
            let v = serde_json::from_str(self.rest[..end].trim()).ok()?;
            self.rest = &self.rest[end..];
            Some(v)
        }
    }
}

#[cfg(test)]
mod tests {
    //! Model outputs from llama.cpp's tests/test-chat.cpp (the Gemma 4 cases).
    use super::*;
    use serde_json::json;

    fn call(name: &str, arguments: serde_json::Value) -> ToolCall {
        ToolCall::new(name, arguments)
    }

    fn calls(text: &str) -> Vec<ToolCall> {
        parse(text)
            .unwrap_or_else(|| panic!("no parse: {text}"))
            .calls
    }

    #[test]
    fn calls_with_each_kind_of_value() {
        let cases = [
            ("<|tool_call>call:get_time{city:<|\"|>San Francisco<|\"|>}<tool_call|>", call("get_time", json!({"city": "San Francisco"}))),
            ("<|tool_call>call:empty_args{}<tool_call|>", call("empty_args", json!({}))),
            ("<|tool_call>call:special_function{arg1:-7}<tool_call|>", call("special_function", json!({"arg1": -7}))),
            ("<|tool_call>call:amount{orig:1.5e10}<tool_call|>", call("amount", json!({"orig": 1.5e10}))),
            ("<|tool_call>call:toggle{enabled:false}<tool_call|>", call("toggle", json!({"enabled": false}))),
            ("<|tool_call>call:set_nullable{value:null}<tool_call|>", call("set_nullable", json!({"value": null}))),
            (
                "<|tool_call>call:todo_list{todos:[<|\"|>buy milk<|\"|>,<|\"|>walk dog<|\"|>]}<tool_call|>",
                call("todo_list", json!({"todos": ["buy milk", "walk dog"]})),
            ),
            (
                "<|tool_call>call:set_config{config:{theme:<|\"|>dark<|\"|>,count:3}}<tool_call|>",
                call("set_config", json!({"config": {"theme": "dark", "count": 3}})),
            ),
            ("<|tool_call>call:todo_list{todos:[]}<tool_call|>", call("todo_list", json!({"todos": []}))),
        ];
        for (text, want) in cases {
            assert_eq!(calls(text), vec![want], "{text}");
        }
    }

    #[test]
    fn content_thoughts_and_parallel_calls() {
        let r = parse("Hello, world!\nWhat's up?<|tool_call>call:get_time{city:<|\"|>Paris<|\"|>}<tool_call|>").unwrap();
        assert_eq!(r.content, "Hello, world!\nWhat's up?");
        assert_eq!(r.calls, vec![call("get_time", json!({"city": "Paris"}))]);
        let r = parse("<|channel>thought\nI'm\nthinking<channel|><|tool_call>call:get_time{city:<|\"|>Paris<|\"|>}<tool_call|>").unwrap();
        assert_eq!(
            (r.reasoning.as_str(), r.content.as_str(), r.calls.len()),
            ("I'm\nthinking", "", 1)
        );
        let two = "<|tool_call>call:get_time{city:<|\"|>London<|\"|>}<tool_call|><|tool_call>call:get_weather{city:<|\"|>Paris<|\"|>}<tool_call|>";
        assert_eq!(
            calls(two),
            vec![
                call("get_time", json!({"city": "London"})),
                call("get_weather", json!({"city": "Paris"}))
            ]
        );
    }

    #[test]
    fn plain_text_and_broken_calls_are_not_gemma4() {
        assert_eq!(parse("Hello"), None);
        assert_eq!(parse("<|tool_call>call:f{city:<|\"|>Par"), None);
        // A stray thought end is dropped.
        assert_eq!(parse("Hi<channel|>").unwrap().content, "Hi");
    }
}
