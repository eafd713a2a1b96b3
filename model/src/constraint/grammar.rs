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
        o.entry("x-guidance").or_insert_with(|| {
            json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
        });
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
    /// Text around each call object (Hermes' `<tool_call>\n`, `\n</tool_call>`).
    pub before: &'static str,
    pub after: &'static str,
    /// Between two calls when several are allowed.
    pub separator: &'static str,
    pub close: &'static str,
    /// The key the arguments go under (`arguments`, Llama 3's `parameters`).
    pub arguments_key: &'static str,
}

/// The schema of one call object: the name is one of `functions` and the
/// arguments validate against that function's parameters.
pub fn call_schema(functions: &[FunctionSpec], arguments_key: &str) -> Value {
    let one = |f: &FunctionSpec| {
        let params = match &f.parameters {
            Value::Object(o) if !o.is_empty() => f.parameters.clone(),
            _ => json!({"type": "object"}),
        };
        json!({
            "type": "object",
            "properties": {"name": {"const": f.name}, arguments_key: params},
            "required": ["name", arguments_key],
            "additionalProperties": false,
        })
    };
    match functions {
        [f] => one(f),
        _ => json!({"anyOf": functions.iter().map(one).collect::<Vec<_>>()}),
    }
}

/// A reply that is nothing but tool calls in `syntax` (one, or with
/// `parallel` one or more), each naming one of `functions`.
pub fn tool_calls(functions: &[FunctionSpec], syntax: &CallSyntax, parallel: bool) -> TopLevelGrammar {
    // Lark string literals are JSON strings; empty parts are left out.
    let lit = |s: &str| {
        if s.is_empty() {
            String::new()
        } else {
            Value::String(s.to_string()).to_string()
        }
    };
    let schema = with_fixed_layout(call_schema(functions, syntax.arguments_key));
    let repeat = if parallel {
        format!("({} call)*", lit(syntax.separator))
    } else {
        String::new()
    };
    let lark = format!(
        "start: {open} call {repeat} {close}\ncall: {before} obj {after}\nobj: %json {schema}\n",
        open = lit(syntax.open),
        close = lit(syntax.close),
        before = lit(syntax.before),
        after = lit(syntax.after),
    );
    TopLevelGrammar::from_lark(lark)
}

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
        assert!(matches!(from_wire("{not json"), Err(ConstraintError::Wire(_))));
    }

    #[test]
    fn call_schema_names_each_function() {
        let f = |n: &str| FunctionSpec { name: n.into(), parameters: json!({}) };
        let s = call_schema(&[f("a"), f("b")], "arguments");
        assert_eq!(s["anyOf"][1]["properties"]["name"]["const"], "b");
        assert_eq!(s["anyOf"][0]["properties"]["arguments"]["type"], "object");
    }
}
