//! gpt-oss's harmony replies: a run of messages, each a header and a body,
//!
//! `<|channel|>analysis<|message|>..<|end|><|start|>assistant<|channel|>commentary to=functions.f <|constrain|>json<|message|>{..}`
//!
//! The reply starts inside the first message (the prompt ends with
//! `<|start|>assistant`). A message addressed `to=functions.NAME` (in the
//! channel header or the role header) is a call whose body is the
//! arguments; `analysis` is reasoning; `final` and `commentary` without a
//! recipient are content. Other recipients (built-in tools) are dropped,
//! as llama.cpp's gpt-oss parser (common/parsers/gpt-oss.cpp) drops them.

use super::parse::{ParsedReply, ToolCall};

const START: &str = "<|start|>";
const MESSAGE: &str = "<|message|>";
const CHANNEL: &str = "<|channel|>";
/// Texts that end a message body. `<|call|>` and `<|return|>` end
/// generation and are not in the text; a reply cut short has none.
const BODY_ENDS: &[&str] = &["<|end|>", "<|call|>", "<|return|>"];

/// `None` when the text has no harmony markup or a call's arguments are
/// not a JSON object.
pub(super) fn parse(text: &str) -> Option<ParsedReply> {
    if !text.contains(MESSAGE) {
        return None;
    }
    let mut reply = ParsedReply::default();
    let mut content = Vec::new();
    let mut reasoning = Vec::new();
    for (i, message) in text.split(START).enumerate() {
        // Later messages name their role first; the first one's role is in the prompt.
        let message = if i == 0 {
            message
        } else {
            message
                .trim_start()
                .strip_prefix("assistant")
                .unwrap_or(message)
        };
        // A message without a body yet (cut short in its header) says nothing.
        let Some((header, body)) = message.split_once(MESSAGE) else {
            continue;
        };
        let body = BODY_ENDS
            .iter()
            .filter_map(|e| body.find(e))
            .min()
            .map_or(body, |end| &body[..end]);
        match recipient(header) {
            Some(to) => {
                if let Some(name) = to.strip_prefix("functions.") {
                    let arguments = serde_json::from_str(body.trim()).ok()?;
                    reply.calls.push(ToolCall {
                        name: name.to_string(),
                        arguments,
                    });
                }
            }
            None if body.trim().is_empty() => {}
            None if channel(header) == Some("analysis") => reasoning.push(body.trim()),
            None => content.push(body.trim()),
        }
    }
    reply.content = content.join("\n");
    reply.reasoning = reasoning.join("\n");
    Some(reply)
}

/// The word after `marker` in a header, up to a space or the next token.
fn word_after<'a>(header: &'a str, marker: &str) -> Option<&'a str> {
    let rest = &header[header.find(marker)? + marker.len()..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '<')
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

fn channel(header: &str) -> Option<&str> {
    word_after(header, CHANNEL)
}

/// The message's recipient; `to=assistant` (which gpt-oss sometimes writes
/// on its own messages) is none.
fn recipient(header: &str) -> Option<&str> {
    word_after(header, "to=").filter(|to| *to != "assistant")
}

#[cfg(test)]
mod tests {
    //! Model outputs from llama.cpp's tests/test-chat.cpp ("GPT-OSS format
    //! tests"), and OpenAI's harmony format guide.
    use super::*;
    use serde_json::json;

    fn call(name: &str, arguments: serde_json::Value) -> ToolCall {
        ToolCall::new(name, arguments)
    }

    #[test]
    fn final_and_commentary_channels_are_content_analysis_is_reasoning() {
        let r = parse("<|channel|>final<|message|>Hello, world!\nWhat's up?").unwrap();
        assert_eq!(r.content, "Hello, world!\nWhat's up?");
        let r = parse("<|channel|>commentary<|message|>Hello, world!\nWhat's up?").unwrap();
        assert_eq!(r.content, "Hello, world!\nWhat's up?");
        let r = parse(
            "<|channel|>analysis<|message|>I'm\nthinking<|end|><|start|>assistant<|channel|>final<|message|>Hello, world!\nWhat's up?",
        )
        .unwrap();
        assert_eq!(
            (r.reasoning.as_str(), r.content.as_str()),
            ("I'm\nthinking", "Hello, world!\nWhat's up?")
        );
        assert!(r.calls.is_empty());
        let cut_short = parse("<|channel|>analysis<|message|>I'm\nthinking").unwrap();
        assert_eq!(cut_short.reasoning, "I'm\nthinking");
    }

    #[test]
    fn calls_addressed_in_the_channel_or_the_role_header() {
        let want = vec![call("special_function", json!({"arg1": 1}))];
        for text in [
            " to=functions.special_function<|channel|>analysis<|message|>{\"arg1\": 1}",
            "<|channel|>analysis to=functions.special_function<|message|>{\"arg1\": 1}",
            " to=functions.special_function<|channel|>analysis <|constrain|>json<|message|>{\"arg1\": 1}",
            "<|channel|>commentary to=functions.special_function<|message|>{\"arg1\": 1}",
        ] {
            let r = parse(text).unwrap();
            assert_eq!((r.calls.clone(), r.content.as_str()), (want.clone(), ""), "{text}");
        }
        let r = parse(
            "<|channel|>analysis<|message|>I'm\nthinking<|end|><|start|>assistant to=functions.special_function<|channel|>analysis<|message|>{\"arg1\": 1}",
        )
        .unwrap();
        assert_eq!((r.calls, r.reasoning.as_str()), (want, "I'm\nthinking"));
    }

    #[test]
    fn a_call_after_reasoning_with_a_constraint() {
        let text = "<|channel|>analysis<|message|>Thinking about edit...<|end|><|start|>assistant<|channel|>commentary to=functions.edit <|constrain|>json<|message|>{\"oldString\": \"if (part < railCount - 1) {\", \"newString\": \"if (part < 4) {\", \"replaceAll\": false}";
        let r = parse(text).unwrap();
        assert_eq!(r.reasoning, "Thinking about edit...");
        assert_eq!(
            r.calls,
            vec![call(
                "edit",
                json!({"oldString": "if (part < railCount - 1) {", "newString": "if (part < 4) {", "replaceAll": false})
            )]
        );
    }

    #[test]
    fn no_markup_or_broken_arguments_is_not_harmony() {
        assert_eq!(parse("plain text"), None);
        assert_eq!(
            parse("<|channel|>commentary to=functions.f<|message|>{\"a\":"),
            None
        );
        // A built-in tool's call is dropped, not returned as a function call.
        let r = parse("<|channel|>analysis to=browser.search<|message|>{\"q\": 1}").unwrap();
        assert!(r.calls.is_empty() && r.content.is_empty());
    }
}
