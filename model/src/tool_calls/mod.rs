//! Tool calls in each model family's own format: which format a chat
//! template speaks ([`ToolCallFormat`]), how a reply's text splits into
//! content and calls ([`parse`]), and the syntax a grammar forces when a
//! call is required.

mod gemma4;
mod harmony;
mod parse;

pub use parse::{parse, ParsedReply, ToolCall};

use serde_json::Value;

use crate::constraint::grammar::{CallShape, CallSyntax};

/// A family's way of writing tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolCallFormat {
    /// Qwen 2.5/3, Hermes, SmolLM3: `<tool_call>\n{"name": .., "arguments": ..}\n</tool_call>`.
    Hermes,
    /// Llama 3.1+: a bare JSON object `{"name": .., "parameters": ..}`,
    /// optionally after `<|python_tag|>`.
    Llama3Json,
    /// Mistral: `[TOOL_CALLS][{"name": .., "arguments": ..}, ..]`, or the
    /// newer `[TOOL_CALLS]name[ARGS]{..}`.
    Mistral,
    /// gpt-oss (harmony): messages on channels; a call is addressed
    /// `to=functions.NAME` and its body is the arguments object:
    /// `<|channel|>commentary to=functions.f <|constrain|>json<|message|>{..}<|call|>`.
    /// `analysis` is reasoning, `final` the answer.
    Harmony,
    /// Gemma 4: `<|tool_call>call:NAME{key:<|"|>text<|"|>,n:1}<tool_call|>`,
    /// thoughts in `<|channel>thought ..<channel|>`.
    Gemma4,
}

impl ToolCallFormat {
    /// The format a template's source speaks, and whether the template
    /// renders `tools` itself (when not, the tools are described in a
    /// system message and the model is asked for Hermes calls, as
    /// llama.cpp's generic handler does).
    pub fn of_template(source: &str) -> (Self, bool) {
        let renders_tools = source.contains("tools");
        let format = if source.contains("<|channel|>") {
            ToolCallFormat::Harmony
        } else if source.contains("<|tool_call>call:") {
            ToolCallFormat::Gemma4
        } else if source.contains("[TOOL_CALLS]") {
            ToolCallFormat::Mistral
        } else if source.contains("<tool_call>") {
            ToolCallFormat::Hermes
        } else if source.contains("<|start_header_id|>") && renders_tools {
            ToolCallFormat::Llama3Json
        } else {
            ToolCallFormat::Hermes
        };
        (
            format,
            renders_tools && (format != ToolCallFormat::Hermes || source.contains("<tool_call>")),
        )
    }

    /// The text a grammar forces for calls in this format.
    pub fn syntax(self) -> CallSyntax {
        let object = |arguments_key| CallShape::Object { arguments_key };
        match self {
            ToolCallFormat::Hermes => CallSyntax {
                open: "",
                before: "<tool_call>\n",
                after: "\n</tool_call>",
                separator: Some("\n"),
                close: "",
                shape: object("arguments"),
            },
            ToolCallFormat::Llama3Json => CallSyntax {
                open: "",
                before: "",
                after: "",
                separator: Some("; "),
                close: "",
                shape: object("parameters"),
            },
            ToolCallFormat::Mistral => CallSyntax {
                open: "[TOOL_CALLS][",
                before: "",
                after: "",
                separator: Some(", "),
                close: "]",
                shape: object("arguments"),
            },
            // `<|call|>` ends generation: one call per turn.
            ToolCallFormat::Harmony => CallSyntax {
                open: "",
                before: "<|channel|>commentary to=functions.",
                after: "",
                separator: None,
                close: "",
                shape: CallShape::NameThenJson {
                    between: " <|constrain|>json<|message|>",
                },
            },
            ToolCallFormat::Gemma4 => CallSyntax {
                open: "",
                before: "<|tool_call>call:",
                after: "<tool_call|>",
                separator: Some(""),
                close: "",
                shape: CallShape::NameThenGemmaObject,
            },
        }
    }

    /// Texts that begin a call (or, for channel formats, text that is not
    /// plain content) in a reply: streamed text is held back from the first
    /// of them on.
    pub fn call_markers(self) -> &'static [&'static str] {
        match self {
            ToolCallFormat::Hermes => &["<tool_call>"],
            ToolCallFormat::Llama3Json => &["<|python_tag|>", "{\"name\""],
            ToolCallFormat::Mistral => &["[TOOL_CALLS]"],
            ToolCallFormat::Harmony => {
                &["<|channel|>", "<|start|>", "<|message|>", " to=functions."]
            }
            ToolCallFormat::Gemma4 => &["<|tool_call>", "<|channel>", "<channel|>"],
        }
    }

    /// Text after which held text is content again (the answer after the
    /// reasoning): harmony's `final` channel, the end of a Gemma 4 thought.
    pub fn content_opener(self) -> Option<&'static str> {
        match self {
            ToolCallFormat::Harmony => Some("<|channel|>final<|message|>"),
            ToolCallFormat::Gemma4 => Some("<channel|>"),
            _ => None,
        }
    }

    /// Every token text the parser reads: the reply keeps these even where
    /// they are control tokens (whose text is otherwise left out).
    pub fn parsed_tokens(self) -> &'static [&'static str] {
        match self {
            ToolCallFormat::Hermes => &["<tool_call>", "</tool_call>"],
            ToolCallFormat::Llama3Json => &["<|python_tag|>"],
            ToolCallFormat::Mistral => &["[TOOL_CALLS]", "[ARGS]"],
            ToolCallFormat::Harmony => &[
                "<|channel|>",
                "<|message|>",
                "<|start|>",
                "<|constrain|>",
                "<|end|>",
            ],
            ToolCallFormat::Gemma4 => &[
                "<|tool_call>",
                "<tool_call|>",
                "<|\"|>",
                "<|channel>",
                "<channel|>",
            ],
        }
    }
}

/// The system text that describes `tools` to a model whose template does
/// not render them (Hermes' prompt, as Qwen 2.5's template writes it).
pub fn hermes_tools_prompt(tools: &[Value]) -> String {
    let mut s = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for t in tools {
        s.push('\n');
        s.push_str(&t.to_string());
    }
    s.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and \
         arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_from_template_sources() {
        let qwen = "{%- if tools %}...<tool_call>\\n{\"name\": ...}</tool_call>{% endif %}";
        assert_eq!(
            ToolCallFormat::of_template(qwen),
            (ToolCallFormat::Hermes, true)
        );
        let llama = "<|start_header_id|>{% if tools is not none %}...{% endif %}";
        assert_eq!(
            ToolCallFormat::of_template(llama),
            (ToolCallFormat::Llama3Json, true)
        );
        let mistral = "{% if tools %}[AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]";
        assert_eq!(
            ToolCallFormat::of_template(mistral),
            (ToolCallFormat::Mistral, true)
        );
        let chatml = "{% for message in messages %}<|im_start|>{{ message.role }}{% endfor %}";
        assert_eq!(
            ToolCallFormat::of_template(chatml),
            (ToolCallFormat::Hermes, false)
        );
        let gpt_oss = "{%- if tools %}{{- render_tool_namespace(\"functions\", tools) }}{% endif %}<|start|>assistant<|channel|>final<|message|>";
        assert_eq!(
            ToolCallFormat::of_template(gpt_oss),
            (ToolCallFormat::Harmony, true)
        );
        let gemma4 = "{%- if tools %}<|tool>declaration:..{% endif %}{{- '<|tool_call>call:' + function['name'] -}}";
        assert_eq!(
            ToolCallFormat::of_template(gemma4),
            (ToolCallFormat::Gemma4, true)
        );
    }
}
