//! Chat templates of the real test models, against llama.cpp's recorded prompts.
use std::path::PathBuf;

use serde_json::Value;
use strata_model::chat::{ChatMessage, ChatTemplate};
use strata_model::tokenizer::Tokenizer;
use strata_model::GgufFile;

fn models_dir() -> PathBuf {
    std::env::var("STRATA_MODELS")
        .map(Into::into)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/strata/models")
        })
}

fn reference_dir() -> PathBuf {
    std::env::var("STRATA_REFERENCE")
        .map(Into::into)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data"))
}

fn check(model: &str, reference: &str) {
    let f = GgufFile::open(models_dir().join(model)).unwrap();
    let tmpl = ChatTemplate::from_gguf(&f).unwrap();
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(reference_dir().join(reference)).unwrap())
            .unwrap();
    let entries = r["chat_template"].as_array().unwrap();
    assert!(!entries.is_empty());
    for e in entries {
        let messages: Vec<ChatMessage> = serde_json::from_value(e["messages"].clone()).unwrap();
        let add = e["add_generation_prompt"].as_bool().unwrap();
        let got = tmpl.render(&messages, add).unwrap();
        assert_eq!(got, e["prompt"].as_str().unwrap(), "messages {messages:?}");
    }
}

#[test]
fn smollm2_template_matches_llama_cpp() {
    check("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m.json");
}

#[test]
fn gemma3_falls_back_to_chatml_as_llama_cpp() {
    check("gemma-3-270m-q4_k_m.gguf", "gemma3-270m.json");
}

/// A rendered prompt tokenizes with its control tokens parsed and decodes back.
#[test]
fn rendered_prompts_tokenize_with_their_control_tokens() {
    for model in [
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "gemma-3-270m-q4_k_m.gguf",
    ] {
        let f = GgufFile::open(models_dir().join(model)).unwrap();
        let tok = Tokenizer::from_gguf(&f).unwrap();
        let tmpl = ChatTemplate::from_gguf(&f).unwrap();
        let prompt = tmpl
            .render(&[ChatMessage::new("user", "Hi!")], true)
            .unwrap();
        let ids = tok.encode(&prompt, false, true);
        if let Some(im_start) = tok.token_id("<|im_start|>") {
            assert_eq!(ids[0], im_start, "{model}");
        }
        assert_eq!(tok.decode_with_special(&ids), prompt, "{model}");
    }
}
