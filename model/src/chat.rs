//! Chat templates from `tokenizer.chat_template`, rendered with minijinja the
//! way Hugging Face and llama.cpp's jinja path render them: `trim_blocks` and
//! `lstrip_blocks` on, Python string methods available, `bos_token`,
//! `eos_token` and `raise_exception` defined. A GGUF without a template gets
//! ChatML, as llama.cpp falls back to.

use std::borrow::Cow;

use minijinja::{context, Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::gguf::GgufFile;

/// llama.cpp's ChatML fallback template.
pub const CHATML_TEMPLATE: &str = "{%- for message in messages -%}\n  \
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}\n\
{%- endfor -%}\n\
{%- if add_generation_prompt -%}\n  {{- '<|im_start|>assistant\\n' -}}\n{%- endif -%}\n";

const KEY_TEMPLATE: &str = "tokenizer.chat_template";

/// Template instructions any conversation may spend, plus per message and
/// per byte of text. Real templates (Qwen's, Llama 3's, Gemma's) spend
/// well under 1,000 per message; the allowance is generous so only a
/// template that loops without end (a hostile GGUF) runs out, in about a
/// second instead of never.
const FUEL_BASE: u64 = 1_000_000;
const FUEL_PER_MESSAGE: u64 = 20_000;
const FUEL_PER_BYTE: u64 = 4;
const TEMPLATE_NAME: &str = "chat_template";

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// An assistant turn's tool calls, `[{id, type, function: {name,
    /// arguments}}]` with the arguments as a JSON object, as llama.cpp
    /// hands them to templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    /// A `tool` turn: the call it answers, and the function's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            tool_calls: None,
            tool_call_id: None,
            name: None,
        }
    }
}

/// What went wrong compiling or rendering a template.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("chat template: `{KEY_TEMPLATE}` is not a string")]
    NotAString,
    #[error("chat template does not compile: {0:#}")]
    Compile(Error),
    #[error("chat template failed to render: {0:#}")]
    Render(Error),
    #[error("chat template ran past its {fuel} instruction budget for {messages} messages: the template loops without end or the conversation is too large")]
    OutOfFuel { fuel: u64, messages: usize },
}

/// A compiled chat template with the model's BOS and EOS texts.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
    /// The `enable_thinking` [`Self::render`] passes: whether the template
    /// renders differently with it, as llama-server decides its default.
    thinking_default: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source_bytes", &self.source.len())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("thinking_default", &self.thinking_default)
            .finish()
    }
}

fn raise_exception(msg: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// The text of the token whose id is stored under `key`, or "".
fn special_text(f: &GgufFile, key: &str) -> String {
    let Some(id) = f.get_u64(key) else {
        return String::new();
    };
    f.get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .and_then(|a| usize::try_from(id).ok().and_then(|i| a.get(i)))
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string()
}

impl ChatTemplate {
    /// The GGUF's own template, or ChatML when it has none.
    pub fn from_gguf(f: &GgufFile) -> Result<Self, ChatError> {
        let source = match f.get(KEY_TEMPLATE) {
            None => CHATML_TEMPLATE,
            Some(v) => v.as_str().ok_or(ChatError::NotAString)?,
        };
        Self::new(
            source,
            special_text(f, "tokenizer.ggml.bos_token_id"),
            special_text(f, "tokenizer.ggml.eos_token_id"),
        )
    }

    /// ChatML, llama.cpp's fallback.
    pub fn chatml() -> Self {
        // The built-in template compiles; a failure here is a bug in this file.
        Self::new(CHATML_TEMPLATE, String::new(), String::new())
            .expect("the built-in ChatML template compiles")
    }

    /// Compiles `source` (Jinja) with the given BOS and EOS texts.
    pub fn new(source: &str, bos_token: String, eos_token: String) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        minijinja_contrib::add_to_environment(&mut env);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(ChatError::Compile)?;
        let mut tmpl = Self {
            env,
            source: source.to_string(),
            bos_token,
            eos_token,
            thinking_default: false,
        };
        tmpl.thinking_default = tmpl.supports_thinking();
        Ok(tmpl)
    }

    /// Whether `enable_thinking` changes how the template renders a one-message
    /// conversation's generation prompt (llama-server's probe: it then passes
    /// `enable_thinking = true` unless reasoning is turned off).
    fn supports_thinking(&self) -> bool {
        let probe = [ChatMessage::new("user", "test")];
        let with = |on| self.render_with_thinking(&probe, true, on).ok();
        with(true) != with(false)
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders a conversation as llama-server does by default; with
    /// `add_generation_prompt`, the prompt ends where the assistant's reply
    /// begins. `enable_thinking` is true where the template supports it.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        self.render_with_thinking(messages, add_generation_prompt, self.thinking_default)
    }

    /// Renders a conversation with the template's `enable_thinking` set
    /// (llama-server's `chat_template_kwargs: {"enable_thinking": …}`).
    pub fn render_with_thinking(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        enable_thinking: bool,
    ) -> Result<String, ChatError> {
        self.render_full(messages, None, add_generation_prompt, enable_thinking)
    }

    /// Renders a conversation with OpenAI `tools` (the request's array as
    /// sent) in the template's `tools` variable, as llama.cpp passes them.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: &[serde_json::Value],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        self.render_full(
            messages,
            Some(tools),
            add_generation_prompt,
            self.thinking_default,
        )
    }

    fn render_full(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
        enable_thinking: bool,
    ) -> Result<String, ChatError> {
        let fuel = fuel_for(messages);
        // Fuel is set per environment; a clone shares the compiled template.
        let mut env = self.env.clone();
        env.set_fuel(Some(fuel));
        let tmpl = env.get_template(TEMPLATE_NAME).map_err(ChatError::Render)?;
        tmpl.render(context! {
            messages => self.with_llama_cpp_roles(messages),
            add_generation_prompt => add_generation_prompt,
            enable_thinking => enable_thinking,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
            // Left undefined without tools: templates test `tools is defined`.
            ..tools.map_or_else(|| context! {}, |t| context! { tools => t })
        })
        .map_err(|e| match e.kind() {
            ErrorKind::OutOfFuel => ChatError::OutOfFuel {
                fuel,
                messages: messages.len(),
            },
            _ => ChatError::Render(e),
        })
    }

    /// The messages as llama.cpp hands them to a template: `developer` turned
    /// into `system`, except for templates with `<|channel|>` (gpt-oss's).
    fn with_llama_cpp_roles<'a>(&self, messages: &'a [ChatMessage]) -> Cow<'a, [ChatMessage]> {
        if self.source.contains("<|channel|>") || !messages.iter().any(|m| m.role == "developer") {
            return Cow::Borrowed(messages);
        }
        let mut mapped = messages.to_vec();
        for m in mapped.iter_mut().filter(|m| m.role == "developer") {
            m.role = "system".to_string();
        }
        Cow::Owned(mapped)
    }
}

/// The instruction budget for rendering `messages`.
fn fuel_for(messages: &[ChatMessage]) -> u64 {
    let bytes: usize = messages
        .iter()
        .map(|m| {
            m.role.len()
                + m.content.len()
                + m.tool_calls.as_ref().map_or(0, |c| c.to_string().len())
        })
        .sum();
    FUEL_BASE
        .saturating_add(FUEL_PER_MESSAGE.saturating_mul(messages.len() as u64))
        .saturating_add(FUEL_PER_BYTE.saturating_mul(bytes as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders() {
        let t = ChatTemplate::chatml();
        let msgs = [ChatMessage::new("user", "hi")];
        assert_eq!(
            t.render(&msgs, true).unwrap(),
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            t.render(&msgs, false).unwrap(),
            "<|im_start|>user\nhi<|im_end|>\n"
        );
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t =
            ChatTemplate::new("{{ raise_exception('no') }}", String::new(), String::new()).unwrap();
        assert!(matches!(t.render(&[], false), Err(ChatError::Render(_))));
    }

    #[test]
    fn blocks_are_trimmed_as_in_hugging_face() {
        let src = "{% set ns = namespace(n=0) %}\n{% for m in messages %}\n  {% set ns.n = ns.n + 1 %}\n{{ m.role }}: {{ m.content }}\n{% endfor %}\n{{ ns.n }}";
        let t = ChatTemplate::new(src, String::new(), String::new()).unwrap();
        let msgs = [
            ChatMessage::new("user", "hi"),
            ChatMessage::new("assistant", "yo"),
        ];
        assert_eq!(
            t.render(&msgs, false).unwrap(),
            "user: hi\nassistant: yo\n2"
        );
    }

    #[test]
    fn a_template_that_never_ends_runs_out_of_fuel() {
        // range() is capped, so nest loops to make the work unbounded.
        let src =
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}";
        let t = ChatTemplate::new(src, String::new(), String::new()).unwrap();
        let started = std::time::Instant::now();
        let e = t
            .render(&[ChatMessage::new("user", "hi")], true)
            .unwrap_err();
        assert!(matches!(e, ChatError::OutOfFuel { .. }), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
    }

    #[test]
    fn long_conversations_stay_within_fuel() {
        let msgs: Vec<ChatMessage> = (0..2000)
            .map(|i| {
                ChatMessage::new(
                    if i % 2 == 0 { "user" } else { "assistant" },
                    "x".repeat(i % 50),
                )
            })
            .collect();
        assert_eq!(
            ChatTemplate::chatml()
                .render(&msgs, true)
                .unwrap()
                .matches("<|im_start|>")
                .count(),
            2001
        );
    }

    #[test]
    fn enable_thinking_defaults_to_true_where_the_template_uses_it() {
        let src = "{% if enable_thinking %}think {% endif %}{{ messages[0].content }}";
        let t = ChatTemplate::new(src, String::new(), String::new()).unwrap();
        let msgs = [ChatMessage::new("user", "hi")];
        assert_eq!(t.render(&msgs, true).unwrap(), "think hi");
        assert_eq!(t.render_with_thinking(&msgs, true, false).unwrap(), "hi");
        // A template that ignores it renders the same either way.
        assert!(!ChatTemplate::chatml().thinking_default);
    }

    #[test]
    fn developer_messages_render_as_system_except_for_gpt_oss() {
        let msgs = [ChatMessage::new("developer", "be brief")];
        let t = ChatTemplate::new("{{ messages[0].role }}", String::new(), String::new()).unwrap();
        assert_eq!(t.render(&msgs, false).unwrap(), "system");
        let src = "{{ messages[0].role }}{# <|channel|> #}";
        let gpt_oss = ChatTemplate::new(src, String::new(), String::new()).unwrap();
        assert_eq!(gpt_oss.render(&msgs, false).unwrap(), "developer");
    }

    #[test]
    fn bad_template_is_a_compile_error() {
        assert!(matches!(
            ChatTemplate::new("{% for %}", String::new(), String::new()),
            Err(ChatError::Compile(_))
        ));
    }

    #[test]
    fn python_string_methods_work() {
        let t = ChatTemplate::new(
            "{{ messages[0].content.strip().upper() }}",
            String::new(),
            String::new(),
        )
        .unwrap();
        assert_eq!(
            t.render(&[ChatMessage::new("user", "  a b ")], false)
                .unwrap(),
            "A B"
        );
    }
}
