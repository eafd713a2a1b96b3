//! Grammar-constrained decoding with llguidance: which grammars a request
//! may ask for ([`grammar`]), the vocabulary as llguidance sees it
//! ([`tok_env`]), and a per-sequence [`TokenConstraint`] that masks logits
//! and follows the generated tokens.
//!
//! The coordinator compiles a request's grammar once to refuse what
//! llguidance cannot honour (a 400 before any worker sees it); the last
//! stage compiles it again from the wire text and runs it.

pub mod grammar;
mod matcher;
mod tok_env;

pub use matcher::TokenConstraint;
pub use tok_env::token_env;

pub use llguidance::api::TopLevelGrammar;
use llguidance::ParserFactory;

use crate::tokenizer::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum ConstraintError {
    #[error("the grammar is not valid JSON for llguidance: {0}")]
    Wire(String),
    #[error("{0}")]
    Compile(String),
    #[error("building the token trie for constrained decoding: {0}")]
    Vocabulary(String),
}

/// Compiles grammars for one model's vocabulary; built once per model (the
/// token trie and llguidance's lexer slices take a few hundred ms).
pub struct GrammarCompiler {
    factory: ParserFactory,
}

impl GrammarCompiler {
    pub fn new(tok: &Tokenizer) -> Result<Self, ConstraintError> {
        let mut factory = ParserFactory::new_simple(&token_env(tok))
            .map_err(|e| ConstraintError::Vocabulary(e.to_string()))?;
        factory.quiet();
        Ok(GrammarCompiler { factory })
    }

    /// A constraint whose first token is generated at position `start`.
    pub fn compile(
        &self,
        grammar: &TopLevelGrammar,
        start: usize,
    ) -> Result<TokenConstraint, ConstraintError> {
        let parser = self
            .factory
            .create_parser(grammar.clone())
            .map_err(|e| ConstraintError::Compile(e.to_string()))?;
        Ok(TokenConstraint::new(
            llguidance::Matcher::new(Ok(parser)),
            start,
        ))
    }

    /// As [`Self::compile`], from the grammar's wire text ([`grammar::to_wire`]).
    pub fn compile_wire(
        &self,
        wire: &str,
        start: usize,
    ) -> Result<TokenConstraint, ConstraintError> {
        self.compile(&grammar::from_wire(wire)?, start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Architecture;
    use crate::gguf::GgufFile;
    use crate::synth::{QuantScheme, SynthSpec};
    use serde_json::json;

    fn synth_tokenizer() -> Tokenizer {
        let s = SynthSpec::from_preset(
            Architecture::Qwen3,
            "tiny",
            QuantScheme::parse("Q8_0").unwrap(),
        )
        .unwrap();
        let f = GgufFile::from_bytes("qwen3", &s.to_bytes().unwrap()).unwrap();
        Tokenizer::from_gguf(&f).unwrap()
    }

    /// Greedy decoding over logits that prefer the filler tokens the
    /// grammar never allows: the mask alone must steer the output into
    /// the schema, and end it with an end-of-generation token.
    #[test]
    fn masked_greedy_decode_follows_the_schema_then_ends() {
        let tok = synth_tokenizer();
        let compiler = GrammarCompiler::new(&tok).unwrap();
        let schema = json!({"type": "object", "properties": {"ok": {"type": "boolean"}},
            "required": ["ok"], "additionalProperties": false});
        let mut c = compiler.compile(&grammar::json_schema(schema), 5).unwrap();
        let mut history: Vec<u32> = vec![0; 5];
        for _ in 0..64 {
            c.follow(&history, 0).unwrap();
            let mut logits: Vec<f32> = (0..tok.vocab_size()).map(|i| i as f32 / 1000.0).collect();
            c.mask(&mut logits).unwrap();
            let best = (0..logits.len())
                .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
                .unwrap() as u32;
            if tok.is_end_of_generation(best) {
                let text = tok.decode(&history[5..]);
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert!(v["ok"].is_boolean(), "{text}");
                return;
            }
            history.push(best);
        }
        panic!(
            "no end of generation after 64 tokens: {:?}",
            tok.decode(&history[5..])
        );
    }

    /// Greedy over logits that favour high ids, under `g`, from position 0.
    fn masked_greedy(tok: &Tokenizer, compiler: &GrammarCompiler, g: &TopLevelGrammar) -> String {
        let mut c = compiler.compile(g, 0).unwrap();
        let mut out: Vec<u32> = Vec::new();
        for _ in 0..200 {
            c.follow(&out, 0).unwrap();
            let mut logits: Vec<f32> = (0..tok.vocab_size()).map(|i| i as f32 / 1000.0).collect();
            c.mask(&mut logits).unwrap();
            let best = (0..logits.len())
                .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
                .unwrap() as u32;
            if tok.is_end_of_generation(best) {
                return tok.decode(&out);
            }
            out.push(best);
        }
        panic!(
            "no end of generation after 200 tokens: {:?}",
            tok.decode(&out)
        );
    }

    #[test]
    fn forced_tool_calls_parse_in_each_family_format() {
        use crate::tool_calls::{parse, ToolCallFormat};
        let tok = synth_tokenizer();
        let compiler = GrammarCompiler::new(&tok).unwrap();
        let f = grammar::FunctionSpec {
            name: "get_weather".into(),
            parameters: json!({"type": "object", "properties": {"unit": {"enum": ["c", "f"]}},
                "required": ["unit"], "additionalProperties": false}),
        };
        for format in [
            ToolCallFormat::Hermes,
            ToolCallFormat::Llama3Json,
            ToolCallFormat::Mistral,
            ToolCallFormat::Harmony,
        ] {
            let g = grammar::tool_calls(std::slice::from_ref(&f), &format.syntax(), false);
            let text = masked_greedy(&tok, &compiler, &g);
            let reply = parse(format, &text);
            assert_eq!(reply.calls.len(), 1, "{format:?}: {text}");
            assert_eq!(reply.calls[0].name, "get_weather", "{format:?}: {text}");
            assert!(
                reply.calls[0].arguments["unit"].is_string(),
                "{format:?}: {text}"
            );
        }
        // Gemma 4's arguments follow its notation, not the schema.
        let g = grammar::tool_calls(&[f], &ToolCallFormat::Gemma4.syntax(), true);
        let text = masked_greedy(&tok, &compiler, &g);
        let reply = parse(ToolCallFormat::Gemma4, &text);
        assert!(!reply.calls.is_empty(), "Gemma4: {text}");
        assert!(
            reply.calls.iter().all(|c| c.name == "get_weather"),
            "Gemma4: {text}"
        );
    }

    #[test]
    fn unsupported_schema_keywords_are_named() {
        let compiler = GrammarCompiler::new(&synth_tokenizer()).unwrap();
        let schema = json!({"type": "array", "items": {"type": "integer"}, "uniqueItems": true});
        let Err(e) = compiler.compile(&grammar::json_schema(schema), 0) else {
            panic!("uniqueItems compiled")
        };
        assert!(e.to_string().contains("uniqueItems"), "{e}");
    }

    #[test]
    fn tokens_outside_the_grammar_are_an_error_not_a_panic() {
        let tok = synth_tokenizer();
        let compiler = GrammarCompiler::new(&tok).unwrap();
        let mut c = compiler.compile(&grammar::json_object(), 0).unwrap();
        let x = tok.encode("x", false, false);
        assert!(c.follow(&x, 0).is_err());
    }
}
