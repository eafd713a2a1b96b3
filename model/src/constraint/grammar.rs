//! The grammars a request can ask for, as llguidance's `TopLevelGrammar`,
//! and their wire text (the JSON llguidance serializes them to).

use llguidance::api::TopLevelGrammar;
use serde_json::{json, Value};

use super::ConstraintError;

/// `response_format: {type: json_object}`: any JSON object.
pub fn json_object() -> TopLevelGrammar {
    json_schema(json!({"type": "object"}))
}

/// `response_format: {type: json_schema}`: a value valid under `schema`.
pub fn json_schema(schema: Value) -> TopLevelGrammar {
    TopLevelGrammar::from_json_schema(with_fixed_layout(schema))
}

/// llguidance's JSON allows any whitespace between tokens by default: a
/// sampler at temperature 1.0 can then spend every token on spaces. One
/// layout (`", "` and `": "`, as Python's json.dumps writes) keeps replies
/// short; a schema that brings its own `x-guidance` options keeps them.
fn with_fixed_layout(schema: Value) -> Value {
    let mut schema = match schema {
        Value::Bool(true) => json!({}),
        other => other,
    };
    if let Value::Object(o) = &mut schema {
        o.entry("x-guidance").or_insert_with(
            || json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
        );
    }
    schema
}

/// A function the model may call: its name and its parameters' schema.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSpec {
    pub name: String,
    pub parameters: Value,
}

/// How a family writes one call, around the call's JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct CallSyntax {
    /// Text before the first call (Mistral's `[TOOL_CALLS][`).
    pub open: &'static str,
    /// Text around each call (Hermes' `<tool_call>\n`, `\n</tool_call>`).
    pub before: &'static str,
    pub after: &'static str,
    /// Between two calls when several are allowed; `None` for a format that
    /// writes one call per turn (harmony: `<|call|>` ends the turn).
    pub separator: Option<&'static str>,
    pub close: &'static str,
    pub shape: CallShape,
}

/// Where a call's name and arguments go.
#[derive(Debug, Clone, PartialEq)]
pub enum CallShape {
    /// One JSON object, `{"name": .., KEY: {..}}`; KEY is `arguments` or
    /// Llama 3's `parameters`.
    Object { arguments_key: &'static str },
    /// The name as text, then `between`, then the arguments as a JSON
    /// object (harmony: `get_weather <|constrain|>json<|message|>{..}`).
    NameThenJson { between: &'static str },
    /// The name, then the arguments in Gemma 4's notation (`{city:<|"|>Paris<|"|>}`):
    /// any such object, not checked against the schema (llama.cpp's Gemma 4
    /// grammar does the same).
    NameThenGemmaObject,
}

/// The schema of one call object: the name is one of `functions` and the
/// arguments validate against that function's parameters.
pub fn call_schema(functions: &[FunctionSpec], arguments_key: &str) -> Value {
    let one = |f: &FunctionSpec| {
        json!({
            "type": "object",
            "properties": {"name": {"const": f.name}, arguments_key: parameters_schema(f)},
            "required": ["name", arguments_key],
            "additionalProperties": false,
        })
    };
    match functions {
        [f] => one(f),
        _ => json!({"anyOf": functions.iter().map(one).collect::<Vec<_>>()}),
    }
}

/// A function's parameters schema; an empty one is any object.
fn parameters_schema(f: &FunctionSpec) -> Value {
    match &f.parameters {
        Value::Object(o) if !o.is_empty() => f.parameters.clone(),
        _ => json!({"type": "object"}),
    }
}

/// A reply that is nothing but tool calls in `syntax` (one, or with
/// `parallel` one or more), each naming one of `functions`.
pub fn tool_calls(
    functions: &[FunctionSpec],
    syntax: &CallSyntax,
    parallel: bool,
) -> TopLevelGrammar {
    let repeat = match syntax.separator {
        Some(sep) if parallel => format!("({} call)*", lit(sep)),
        _ => String::new(),
    };
    let mut lark = format!(
        "start: {open} call {repeat} {close}\ncall: {before} body {after}\n",
        open = lit(syntax.open),
        close = lit(syntax.close),
        before = lit(syntax.before),
        after = lit(syntax.after),
    );
    match &syntax.shape {
        CallShape::Object { arguments_key } => {
            let schema = with_fixed_layout(call_schema(functions, arguments_key));
            lark.push_str(&format!("body: %json {schema}\n"));
        }
        CallShape::NameThenJson { between } => {
            let alternatives: Vec<String> = (0..functions.len()).map(|i| format!("f{i}")).collect();
            lark.push_str(&format!("body: {}\n", alternatives.join(" | ")));
            for (i, f) in functions.iter().enumerate() {
                let schema = with_fixed_layout(parameters_schema(f));
                lark.push_str(&format!(
                    "f{i}: {} {} %json {schema}\n",
                    lit(&f.name),
                    lit(between)
                ));
            }
        }
        CallShape::NameThenGemmaObject => {
            let names: Vec<String> = functions.iter().map(|f| lit(&f.name)).collect();
            lark.push_str(&format!(
                "body: ({}) gobject\n{GEMMA_OBJECT}",
                names.join(" | ")
            ));
        }
    }
    TopLevelGrammar::from_lark(lark)
}

/// A Lark string literal (a JSON string); empty parts are left out.
fn lit(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        Value::String(s.to_string()).to_string()
    }
}

/// Gemma 4's argument notation: JSON with bare keys and strings between
/// `<|"|>` marks.
const GEMMA_OBJECT: &str = r#"gobject: "{" (gpair ("," gpair)*)? "}"
gpair: GKEY ":" gvalue
gvalue: gstring | gobject | garray | GNUMBER | "true" | "false" | "null"
garray: "[" (gvalue ("," gvalue)*)? "]"
gstring: "<|\"|>" GTEXT? "<|\"|>"
GKEY: /[A-Za-z_][A-Za-z0-9_]*/
GNUMBER: /-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?/
GTEXT: /[^<]+/
"#;

pub fn to_wire(g: &TopLevelGrammar) -> String {
    // Serializing plain data (strings, JSON values) cannot fail.
    serde_json::to_string(g).unwrap_or_default()
}

pub fn from_wire(wire: &str) -> Result<TopLevelGrammar, ConstraintError> {
    serde_json::from_str(wire).map_err(|e| ConstraintError::Wire(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_text_round_trips() {
        let g = json_schema(json!({"type": "object", "properties": {"a": {"type": "integer"}}}));
        let back = from_wire(&to_wire(&g)).unwrap();
        assert_eq!(to_wire(&back), to_wire(&g));
        assert!(matches!(
            from_wire("{not json"),
            Err(ConstraintError::Wire(_))
        ));
    }

    #[test]
    fn call_schema_names_each_function() {
        let f = |n: &str| FunctionSpec {
            name: n.into(),
            parameters: json!({}),
        };
        let s = call_schema(&[f("a"), f("b")], "arguments");
        assert_eq!(s["anyOf"][1]["properties"]["name"]["const"], "b");
        assert_eq!(s["anyOf"][0]["properties"]["arguments"]["type"], "object");
    }
}
