//! Chat templates of the real test models, and the Qwen3.5 and Gemma 4
//! templates in `tests/data/templates`, against llama.cpp's recorded prompts.
mod common;

use common::{models_dir, reference_dir};
use serde_json::Value;
use strata_model::chat::{ChatMessage, ChatTemplate};
use strata_model::tokenizer::Tokenizer;
use strata_model::GgufFile;

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

/// `tests/data/chat-templates.json` (scripts/record-templates.py): llama-server's
/// `/apply-template` with its default arguments and with `enable_thinking` off.
#[test]
fn qwen35_and_gemma4_templates_render_as_llama_cpp() {
    let dir = reference_dir();
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("chat-templates.json")).unwrap())
            .unwrap();
    let templates = r["templates"].as_array().unwrap();
    assert_eq!(templates.len(), 3);
    let mut failures = Vec::new();
    for t in templates {
        let name = t["template"].as_str().unwrap();
        let source = std::fs::read_to_string(dir.join(name)).unwrap();
        let text = |k: &str| t[k].as_str().unwrap().to_string();
        let tmpl = ChatTemplate::new(&source, text("bos_token"), text("eos_token")).unwrap();
        // llama.cpp drops a leading BOS text where the model adds BOS itself
        // (strata's API drops the second BOS token instead).
        let bos = text("bos_token");
        let strip = |p: String| match t["add_bos"].as_bool().unwrap() {
            true => p
                .strip_prefix(bos.as_str())
                .map(str::to_string)
                .unwrap_or(p),
            false => p,
        };
        let renders = t["renders"].as_array().unwrap();
        assert!(renders.len() >= 12, "{name}");
        for e in renders {
            let messages: Vec<ChatMessage> = serde_json::from_value(e["messages"].clone()).unwrap();
            let add = e["add_generation_prompt"].as_bool().unwrap();
            assert!(e["default_is_enable_thinking"].as_bool().unwrap(), "{name}");
            let cases = [
                (tmpl.render(&messages, add), "prompt"),
                (
                    tmpl.render_with_thinking(&messages, add, false),
                    "prompt_enable_thinking_false",
                ),
            ];
            for (got, key) in cases {
                // A prompt, or {"error": …} where the template raised an exception.
                let want = e[key].as_str();
                match (got.map(strip), want) {
                    (Ok(got), Some(want)) if got == want => {}
                    (Err(_), None) => {}
                    (got, _) => failures.push(format!(
                        "{name} {key} (add_generation_prompt {add}) {messages:?}:\n  want {}\n  got  {got:?}",
                        e[key]
                    )),
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// llama.cpp's recorded Qwen3.5 and Gemma 4 prompts tokenize with their
/// control tokens (llama.cpp's vocab-only GGUFs) and decode back.
#[test]
fn recorded_qwen35_and_gemma4_prompts_tokenize_with_their_control_tokens() {
    let r: Value = serde_json::from_str(
        &std::fs::read_to_string(reference_dir().join("chat-templates.json")).unwrap(),
    )
    .unwrap();
    for t in r["templates"].as_array().unwrap() {
        let (vocab, turn) = match t["synth_arch"].as_str().unwrap() {
            "qwen35" => ("ggml-vocab-qwen35.gguf", "<|im_start|>"),
            _ => ("ggml-vocab-gemma-4.gguf", "<|turn>"),
        };
        let tok =
            Tokenizer::from_gguf(&GgufFile::open(common::model_file(vocab)).unwrap()).unwrap();
        let turn = tok.token_id(turn).unwrap();
        for e in t["renders"].as_array().unwrap() {
            let Some(prompt) = e["prompt"].as_str() else {
                continue;
            };
            let ids = tok.encode(prompt, true, true);
            let body = if tok.add_bos() { &ids[1..] } else { &ids[..] };
            assert!(body.contains(&turn), "{vocab}: {prompt:?}");
            assert_eq!(tok.decode_with_special(body), prompt, "{vocab}");
        }
    }
}
