//! The tokenizer on the real test models, against llama.cpp's recorded outputs
//! (`tests/data/*.json`).
mod common;

use common::{models_dir, reference_dir};
use serde_json::Value;
use strata_model::tokenizer::{TextStream, Tokenizer};
use strata_model::GgufFile;

fn load(model: &str, reference: &str) -> (Tokenizer, Value) {
    let f = GgufFile::open(models_dir().join(model)).unwrap();
    let tok = Tokenizer::from_gguf(&f).unwrap();
    let text = std::fs::read_to_string(reference_dir().join(reference)).unwrap();
    (tok, serde_json::from_str(&text).unwrap())
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn check_tokenize(tok: &Tokenizer, r: &Value) {
    let entries = r["tokenize"].as_array().unwrap();
    assert!(!entries.is_empty());
    let mut failures = Vec::new();
    for e in entries {
        let text = e["text"].as_str().unwrap();
        let want = ids(&e["ids"]);
        let got = tok.encode(text, false, false);
        if got != want {
            failures.push(format!("{text:?}:\n  want {want:?}\n  got  {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} tokenize mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn check_greedy(tok: &Tokenizer, r: &Value) {
    let entries = r["greedy"].as_array().unwrap();
    assert!(!entries.is_empty());
    for g in entries {
        let prompt = g["prompt"].as_str().unwrap();
        assert_eq!(
            tok.encode(prompt, true, false),
            ids(&g["prompt_ids"]),
            "prompt {prompt:?}"
        );
        let tokens = ids(&g["tokens"]);
        let content = g["content"].as_str().unwrap();
        assert_eq!(
            tok.decode(&tokens),
            content,
            "decoding the tokens of {prompt:?}"
        );
        // Streaming gives the same text, and each step's piece.
        let mut stream = TextStream::new();
        let mut streamed = String::new();
        for (i, &t) in tokens.iter().enumerate() {
            if let Some(piece) = g["steps"].get(i).and_then(|s| s["piece"].as_str()) {
                assert_eq!(
                    String::from_utf8_lossy(tok.piece(t)),
                    piece,
                    "step {i} of {prompt:?}"
                );
            }
            streamed.push_str(&stream.push_token(tok, t));
        }
        streamed.push_str(&stream.finish());
        assert_eq!(streamed, content);
        let mut detok = tok.text_stream();
        let mut text: String = tokens.iter().map(|&t| detok.push(t)).collect();
        text.push_str(&detok.finish());
        assert_eq!(text, content);
    }
}

#[test]
fn smollm2_tokenize_matches_llama_cpp() {
    let (tok, r) = load("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m.json");
    check_tokenize(&tok, &r);
}

#[test]
fn smollm2_prompts_and_decoding_match_llama_cpp() {
    let (tok, r) = load("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m.json");
    check_greedy(&tok, &r);
}

#[test]
fn gemma3_tokenize_matches_llama_cpp() {
    let (tok, r) = load("gemma-3-270m-q4_k_m.gguf", "gemma3-270m.json");
    check_tokenize(&tok, &r);
}

#[test]
fn gemma3_prompts_and_decoding_match_llama_cpp() {
    let (tok, r) = load("gemma-3-270m-q4_k_m.gguf", "gemma3-270m.json");
    check_greedy(&tok, &r);
}

#[test]
fn smollm2_special_tokens() {
    let (tok, _) = load("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m.json");
    assert_eq!(tok.vocab_size(), 49152);
    assert!(!tok.add_bos());
    let im_start = tok.token_id("<|im_start|>").unwrap();
    let im_end = tok.token_id("<|im_end|>").unwrap();
    assert!(tok.is_end_of_generation(im_end));
    assert!(tok.is_end_of_generation(tok.eos().unwrap()));
    assert!(!tok.is_end_of_generation(im_start));
    // Parsed only when asked.
    let parsed = tok.encode("<|im_start|>user\nhi<|im_end|>", false, true);
    assert_eq!(parsed.first(), Some(&im_start));
    assert_eq!(parsed.last(), Some(&im_end));
    let unparsed = tok.encode("<|im_start|>", false, false);
    assert!(!unparsed.contains(&im_start));
    assert_eq!(
        tok.decode_with_special(&parsed),
        "<|im_start|>user\nhi<|im_end|>"
    );
    assert_eq!(tok.decode(&parsed), "user\nhi");
}

#[test]
fn gemma3_special_tokens() {
    let (tok, _) = load("gemma-3-270m-q4_k_m.gguf", "gemma3-270m.json");
    assert_eq!(tok.vocab_size(), 262144);
    assert!(tok.add_bos());
    assert_eq!(tok.bos(), Some(2));
    let eot = tok.token_id("<end_of_turn>").unwrap();
    assert!(tok.is_end_of_generation(eot));
    assert!(tok.is_end_of_generation(tok.eos().unwrap()));
    let sot = tok.token_id("<start_of_turn>").unwrap();
    assert_eq!(tok.encode("<start_of_turn>user", true, true)[..2], [2, sot]);
    // Byte fallback decodes back to the text.
    let text = "emoji 🦀🚀 and ❤️ 日本語";
    assert_eq!(tok.decode(&tok.encode(text, false, false)), text);
}

/// The perplexity text, tokenized whole as llama-perplexity does, decodes back
/// to itself (neither model adds a space prefix or cleans spaces).
fn check_round_trip(tok: &Tokenizer) {
    let text = std::fs::read_to_string(reference_dir().join("gpl-3.txt")).unwrap();
    let start = std::time::Instant::now();
    let ids = tok.encode(&text, false, false);
    eprintln!(
        "{} bytes -> {} tokens in {:?}",
        text.len(),
        ids.len(),
        start.elapsed()
    );
    // llama-perplexity scored 59 chunks of 128 tokens for both models.
    assert_eq!(ids.len() / 128, 59, "{} tokens", ids.len());
    assert_eq!(tok.decode(&ids), text);
    // The text holds no special-token texts, so parsing them changes nothing.
    let start = std::time::Instant::now();
    assert_eq!(tok.encode(&text, false, true), ids);
    eprintln!("with parse_special: {:?}", start.elapsed());
}

#[test]
fn smollm2_round_trips_the_perplexity_text() {
    let (tok, _) = load("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m.json");
    check_round_trip(&tok);
}

#[test]
fn gemma3_round_trips_the_perplexity_text() {
    let (tok, _) = load("gemma-3-270m-q4_k_m.gguf", "gemma3-270m.json");
    check_round_trip(&tok);
}
