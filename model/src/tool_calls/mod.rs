//! Tool calls in each model family's own format: which format a chat
//! template speaks ([`ToolCallFormat`]), how a reply's text splits into
//! content and calls ([`parse`]), and the syntax a grammar forces when a
//! call is required.

mod parse;

pub use parse::{parse, ParsedReply, ToolCall};

use serde_json::Value;

use crate::constraint::grammar::CallSyntax;

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
}

impl ToolCallFormat {
    /// The format a template's source speaks, and whether the template
    /// renders `tools` itself (when not, the tools are described in a
    /// system message and the model is asked for Hermes calls, as
    /// llama.cpp's generic handler does).
    pub fn of_template(source: &str) -> (Self, bool) {
        let renders_tools = source.contains("tools");
        let format = if source.contains("[TOOL_CALLS]") {
            ToolCallFormat::Mistral
        } else if source.contains("<tool_call>") {
            ToolCallFormat::Hermes
        } else if source.contains("<|start_header_id|>") && renders_tools {
            ToolCallFormat::Llama3Json
        } else {
            ToolCallFormat::Hermes
        };
        (format, renders_tools && (format != ToolCallFormat::Hermes || source.contains("<tool_call>")))
    }

    /// The text a grammar forces for calls in this format.
    pub fn syntax(self) -> CallSyntax {
        match self {
            ToolCallFormat::Hermes => CallSyntax {
                open: "",
                before: "<tool_call>\n",
                after: "\n</tool_call>",
                separator: "\n",
                close: "",
                arguments_key: "arguments",
            },
            ToolCallFormat::Llama3Json => CallSyntax {
                open: "",
                before: "",
                after: "",
                separator: "; ",
                close: "",
                arguments_key: "parameters",
            },
            ToolCallFormat::Mistral => CallSyntax {
                open: "[TOOL_CALLS][",
                before: "",
                after: "",
                separator: ", ",
                close: "]",
                arguments_key: "arguments",
            },
        }
    }

    /// Texts that begin a call in a reply: streamed text is held back from
    /// the first of them on.
    pub fn call_markers(self) -> &'static [&'static str] {
        match self {
            ToolCallFormat::Hermes => &["<tool_call>"],
            ToolCallFormat::Llama3Json => &["<|python_tag|>", "{\"name\""],
            ToolCallFormat::Mistral => &["[TOOL_CALLS]"],
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
        assert_eq!(ToolCallFormat::of_template(qwen), (ToolCallFormat::Hermes, true));
        let llama = "<|start_header_id|>{% if tools is not none %}...{% endif %}";
        assert_eq!(ToolCallFormat::of_template(llama), (ToolCallFormat::Llama3Json, true));
        let mistral = "{% if tools %}[AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]";
        assert_eq!(ToolCallFormat::of_template(mistral), (ToolCallFormat::Mistral, true));
        let chatml = "{% for message in messages %}<|im_start|>{{ message.role }}{% endfor %}";
        assert_eq!(ToolCallFormat::of_template(chatml), (ToolCallFormat::Hermes, false));
    }
}
