//! Tool calls on the request side: `tools`, `tool_choice` and
//! `parallel_tool_calls` validated into a [`ToolUse`], the conversation's
//! tool turns turned into template messages, and the grammar that forces a
//! call when one is required or named.

use serde_json::{json, Value};
use strata_model::chat::{ChatMessage, ChatTemplate};
use strata_model::constraint::grammar::{self, FunctionSpec};
use strata_model::constraint::TopLevelGrammar;
use strata_model::tool_calls::{hermes_tools_prompt, ToolCallFormat};

use super::error::ApiError;
use super::request::ChatRequest;

/// What `tool_choice` allows.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    /// The model decides; its reply is parsed for calls.
    Auto,
    /// The reply is one or more calls of any tool (grammar-constrained).
    Required,
    /// The reply is a call of this function (grammar-constrained).
    Named(String),
}

/// A request's tools, when it offers any and does not say `none`.
#[derive(Debug, Clone)]
pub struct ToolUse {
    /// As sent, for the template.
    pub tools: Vec<Value>,
    pub functions: Vec<FunctionSpec>,
    pub choice: ToolChoice,
    pub parallel: bool,
}

fn bad(param: &str, why: String) -> ApiError {
    ApiError::invalid(Some(param.to_string()), why)
}

impl ToolUse {
    pub fn from_request(req: &ChatRequest) -> Result<Option<ToolUse>, ApiError> {
        let tools = req.tools.clone().unwrap_or_default();
        let choice = match &req.tool_choice {
            None | Some(Value::Null) => ToolChoice::Auto,
            Some(Value::String(s)) => match s.as_str() {
                "none" => return Ok(None),
                "auto" => ToolChoice::Auto,
                "required" => ToolChoice::Required,
                other => {
                    return Err(bad(
                        "tool_choice",
                        format!("tool_choice must be none, auto, required or a function, got {other:?}"),
                    ))
                }
            },
            Some(v) => match v["function"]["name"].as_str() {
                Some(name) if v["type"] == "function" => ToolChoice::Named(name.to_string()),
                _ => {
                    return Err(bad(
                        "tool_choice",
                        format!("tool_choice must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {v}"),
                    ))
                }
            },
        };
        if tools.is_empty() {
            return match choice {
                ToolChoice::Auto => Ok(None),
                _ => Err(bad(
                    "tool_choice",
                    "tool_choice asks for a call but tools is empty".into(),
                )),
            };
        }
        let mut functions = Vec::with_capacity(tools.len());
        for (i, t) in tools.iter().enumerate() {
            let f = &t["function"];
            let name = f["name"].as_str().filter(|n| !n.is_empty());
            match (t["type"].as_str(), name) {
                (Some("function"), Some(name)) => functions.push(FunctionSpec {
                    name: name.to_string(),
                    parameters: f.get("parameters").cloned().unwrap_or(json!({})),
                }),
                _ => {
                    return Err(bad(
                        &format!("tools[{i}]"),
                        format!("a tool must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {t}"),
                    ))
                }
            }
        }
        if let ToolChoice::Named(name) = &choice {
            functions.retain(|f| &f.name == name);
            if functions.is_empty() {
                return Err(bad(
                    "tool_choice",
                    format!("tool_choice names {name:?}, which is not in tools"),
                ));
            }
        }
        Ok(Some(ToolUse {
            tools,
            functions,
            choice,
            parallel: req.parallel_tool_calls.unwrap_or(true),
        }))
    }

    /// The grammar the reply must follow: calls only, when a call is
    /// required or named; nothing for `auto`.
    pub fn grammar(&self, format: ToolCallFormat) -> Option<TopLevelGrammar> {
        let parallel = self.parallel && self.choice == ToolChoice::Required;
        match self.choice {
            ToolChoice::Auto => None,
            _ => Some(grammar::tool_calls(
                &self.functions,
                &format.syntax(),
                parallel,
            )),
        }
    }
}

/// An OpenAI `tool_calls` entry with its `arguments` string parsed to JSON,
/// as templates index into it (llama.cpp does the same).
fn call_for_template(call: &Value) -> Value {
    let mut c = call.clone();
    if let Some(args) = c["function"]["arguments"].as_str() {
        if let Ok(v) = serde_json::from_str::<Value>(args) {
            c["function"]["arguments"] = v;
        }
    }
    c
}

/// The conversation as template messages. For a template that does not
/// render tools, the tools are described in the system message and earlier
/// calls written into the assistant text in Hermes' format, so the model
/// sees the format it is asked to answer in.
pub fn template_messages(
    req: &ChatRequest,
    texts: Vec<(String, String)>,
    tools: Option<&ToolUse>,
    renders_tools: bool,
) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = req
        .messages
        .iter()
        .zip(texts)
        .map(|(m, (role, content))| {
            let calls: Option<Vec<Value>> = m
                .tool_calls
                .as_ref()
                .map(|c| c.iter().map(call_for_template).collect());
            let mut msg = ChatMessage::new(role, content);
            msg.tool_call_id = m.tool_call_id.clone();
            msg.name = m.name.clone();
            match calls {
                Some(calls) if !renders_tools => {
                    for c in calls {
                        let f = &c["function"];
                        let call = json!({"name": f["name"], "arguments": f["arguments"]});
                        msg.content
                            .push_str(&format!("<tool_call>\n{call}\n</tool_call>"));
                    }
                }
                Some(calls) => msg.tool_calls = Some(Value::Array(calls)),
                None => {}
            }
            msg
        })
        .collect();
    if let (Some(t), false) = (tools, renders_tools) {
        let prompt = hermes_tools_prompt(&t.tools);
        match out.first_mut().filter(|m| m.role == "system") {
            Some(system) => system.content = format!("{}\n\n{prompt}", system.content),
            None => out.insert(0, ChatMessage::new("system", prompt)),
        }
    }
    out
}

/// Renders the prompt, with the tools where the template takes them.
pub fn render(
    template: &ChatTemplate,
    messages: &[ChatMessage],
    tools: Option<&ToolUse>,
    renders_tools: bool,
) -> Result<String, ApiError> {
    let r = match tools {
        Some(t) if renders_tools => template.render_with_tools(messages, &t.tools, true),
        _ => template.render(messages, true),
    };
    r.map_err(|e| ApiError::invalid(Some("messages".to_string()), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(extra: &str) -> ChatRequest {
        let body = format!(
            r#"{{"messages":[{{"role":"user","content":"hi"}}],
                "tools":[{{"type":"function","function":{{"name":"get_weather","parameters":{{"type":"object","properties":{{"city":{{"type":"string"}}}}}}}}}},
                         {{"type":"function","function":{{"name":"get_time"}}}}]{extra}}}"#
        );
        serde_json::from_str(&body).unwrap()
    }

    #[test]
    fn tool_choice_forms() {
        let t = ToolUse::from_request(&req("")).unwrap().unwrap();
        assert_eq!((t.choice, t.functions.len()), (ToolChoice::Auto, 2));
        assert!(ToolUse::from_request(&req(r#","tool_choice":"none""#))
            .unwrap()
            .is_none());
        let t = ToolUse::from_request(&req(
            r#","tool_choice":{"type":"function","function":{"name":"get_time"}}"#,
        ))
        .unwrap()
        .unwrap();
        assert_eq!(t.choice, ToolChoice::Named("get_time".into()));
        assert_eq!(t.functions.len(), 1);
        for bad in [
            r#","tool_choice":"always""#,
            r#","tool_choice":{"type":"function","function":{"name":"nope"}}"#,
        ] {
            let e = ToolUse::from_request(&req(bad)).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("tool_choice"), "{bad}");
        }
    }

    #[test]
    fn history_with_calls_reaches_a_template_without_tools_as_hermes_text() {
        let r: ChatRequest = serde_json::from_str(
            r#"{"messages":[{"role":"user","content":"weather?"},
              {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Oslo\"}"}}]},
              {"role":"tool","tool_call_id":"c1","content":"5 C"}],
              "tools":[{"type":"function","function":{"name":"get_weather"}}]}"#,
        )
        .unwrap();
        let t = ToolUse::from_request(&r).unwrap();
        let msgs = template_messages(&r, r.text_messages().unwrap(), t.as_ref(), false);
        assert_eq!(msgs[0].role, "system");
        assert!(msgs[0].content.contains("\"get_weather\""));
        assert_eq!(
            msgs[2].content,
            "<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Oslo\"}}\n</tool_call>"
        );
        assert_eq!(msgs[3].tool_call_id.as_deref(), Some("c1"));
        let msgs = template_messages(&r, r.text_messages().unwrap(), t.as_ref(), true);
        assert_eq!(
            msgs[1].tool_calls.as_ref().unwrap()[0]["function"]["arguments"]["city"],
            "Oslo"
        );
    }
}
