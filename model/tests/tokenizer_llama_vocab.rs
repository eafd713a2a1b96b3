//! The Qwen3.5 and Gemma 4 tokenizers against llama.cpp's own tokenizer tests:
//! its vocab-only GGUFs and their `.inp`/`.out` pairs (texts and the token ids
//! Hugging Face's tokenizers give for them, which llama.cpp's
//! `test-tokenizer-0` checks), fetched by `scripts/fetch-models.sh`; and
//! llama.cpp's own tokenization of a mixed-script text and `gpl-3.txt`
//! (`tests/data/llama-vocab-tokens.json`, scripts/record-vocab-tokens.py).
mod common;

use serde_json::Value;
use sha2::{Digest, Sha256};
use strata_model::tokenizer::Tokenizer;
use strata_model::GgufFile;

/// One `.inp`/`.out` pair as `test-tokenizer-0` reads it: inputs separated by
/// `\n__ggml_vocab_test__\n`, one line of space-separated ids per input.
fn cases(vocab: &str) -> Vec<(String, Vec<u32>)> {
    let read =
        |ext: &str| std::fs::read_to_string(common::model_file(&format!("{vocab}.{ext}"))).unwrap();
    let (inp, out) = (read("inp"), read("out"));
    let sep = "\n__ggml_vocab_test__\n";
    let texts: Vec<&str> = inp.strip_suffix(sep).unwrap_or(&inp).split(sep).collect();
    let ids: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    assert_eq!(
        texts.len(),
        ids.len(),
        "{vocab}: .inp and .out disagree on the count"
    );
    texts.into_iter().map(str::to_string).zip(ids).collect()
}

fn load(vocab: &str) -> Tokenizer {
    Tokenizer::from_gguf(&GgufFile::open(common::model_file(vocab)).unwrap()).unwrap()
}

/// Every case tokenizes as llama.cpp's test expects (no BOS, special tokens
/// not parsed) and decodes back to its text.
fn check_cases(vocab: &str, expected_cases: usize) {
    let tok = load(vocab);
    let cases = cases(vocab);
    assert_eq!(cases.len(), expected_cases, "{vocab}");
    let mut failures = Vec::new();
    for (text, want) in &cases {
        let got = tok.encode(text, false, false);
        if &got != want {
            failures.push(format!("{text:?}:\n  want {want:?}\n  got  {got:?}"));
        }
        let decoded = tok.decode(&got);
        if &decoded != text {
            failures.push(format!("{text:?} decodes to {decoded:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{vocab}: {} of {} cases fail:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn qwen35_matches_llama_cpp_tokenizer_tests() {
    check_cases("ggml-vocab-qwen35.gguf", 50);
}

#[test]
fn gemma4_matches_llama_cpp_tokenizer_tests() {
    check_cases("ggml-vocab-gemma-4.gguf", 46);
}

fn ids(v: &Value) -> Vec<u32> {
    let ids = v.as_array().unwrap();
    ids.iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// As llama.cpp's `llama_tokenize`: plain (no BOS, special tokens as text) and
/// as a prompt (BOS where the model adds it, special tokens parsed).
#[test]
fn both_tokenize_as_llama_cpp_itself() {
    let dir = common::reference_dir();
    let r: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("llama-vocab-tokens.json")).unwrap(),
    )
    .unwrap();
    let text = r["text"].as_str().unwrap();
    let gpl = std::fs::read_to_string(dir.join("gpl-3.txt")).unwrap();
    for vocab in ["ggml-vocab-qwen35.gguf", "ggml-vocab-gemma-4.gguf"] {
        let tok = load(vocab);
        let want = &r["vocabs"][vocab];
        for (key, special) in [("plain", false), ("prompt", true)] {
            let got = tok.encode(text, special, special);
            let want_ids = ids(&want[key]);
            let first_diff = got.iter().zip(&want_ids).position(|(a, b)| a != b);
            assert!(
                got == want_ids,
                "{vocab} {key}: {} tokens, llama.cpp {}; first difference at {first_diff:?}",
                got.len(),
                want_ids.len()
            );
            let got = tok.encode(&gpl, special, special);
            let joined: Vec<String> = got.iter().map(u32::to_string).collect();
            let sha = Sha256::digest(joined.join(" ").as_bytes());
            let sha: String = sha.iter().map(|b| format!("{b:02x}")).collect();
            let want_gpl = &want[format!("gpl_{key}")];
            assert_eq!(
                got.len() as u64,
                want_gpl["tokens"].as_u64().unwrap(),
                "{vocab} gpl {key}"
            );
            assert_eq!(
                sha,
                want_gpl["sha256"].as_str().unwrap(),
                "{vocab} gpl {key}"
            );
        }
    }
}

/// The perplexity text, tokenized whole, decodes back to itself.
#[test]
fn both_round_trip_the_perplexity_text() {
    let text = std::fs::read_to_string(common::reference_dir().join("gpl-3.txt")).unwrap();
    for vocab in ["ggml-vocab-qwen35.gguf", "ggml-vocab-gemma-4.gguf"] {
        let tok = load(vocab);
        let ids = tok.encode(&text, false, false);
        assert_eq!(tok.decode(&ids), text, "{vocab}");
        assert_eq!(tok.encode(&text, false, true), ids, "{vocab}");
    }
}

#[test]
fn gemma4_special_tokens_as_llama_cpp_sets_them() {
    let tok = load("ggml-vocab-gemma-4.gguf");
    assert!(tok.add_bos());
    assert_eq!(tok.bos(), Some(2));
    assert_eq!(tok.eos(), Some(1));
    let id = |t: &str| tok.token_id(t).unwrap();
    for t in ["<eos>", "<turn|>", "<|tool_response>"] {
        assert!(tok.is_end_of_generation(id(t)), "{t}");
    }
    // With `<|tool_response>` present, `</s>` is an ordinary token.
    assert!(!tok.is_end_of_generation(id("</s>")));
    assert_eq!(
        tok.encode("</s>", false, true),
        tok.encode("</s>", false, false)
    );
    assert_eq!(
        tok.encode("<|turn>user\nHi<turn|>", true, true)[..3],
        [2, id("<|turn>"), id("user")]
    );
    // Byte fallback: `<0xXX>` tokens for what no merge reaches.
    let text = "\u{10FFFD} \u{E000}";
    let ids = tok.encode(text, false, false);
    assert!(ids
        .iter()
        .any(|&t| tok.token_text(t).unwrap().starts_with("<0x")));
    assert_eq!(tok.decode(&ids), text);
}

#[test]
fn qwen35_special_tokens() {
    let tok = load("ggml-vocab-qwen35.gguf");
    assert!(!tok.add_bos());
    let im_end = tok.token_id("<|im_end|>").unwrap();
    assert!(tok.is_end_of_generation(im_end));
    let ids = tok.encode("<|im_start|>user\nHi<|im_end|>", false, true);
    assert_eq!(ids.last(), Some(&im_end));
    assert_eq!(
        tok.decode_with_special(&ids),
        "<|im_start|>user\nHi<|im_end|>"
    );
}
