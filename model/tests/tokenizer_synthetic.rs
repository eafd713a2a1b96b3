//! The tokenizer on small GGUFs built in memory: the algorithms on a vocabulary
//! small enough to reason about, and malformed metadata as clear errors.
use strata_model::gguf::GgufWriter;
use strata_model::tokenizer::{Tokenizer, TokenizerError};
use strata_model::{GgufFile, MetaValue};

fn gguf(meta: Vec<(&str, MetaValue)>) -> GgufFile {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", MetaValue::String("llama".into()));
    for (k, v) in meta {
        w.add_metadata(k, v);
    }
    GgufFile::from_bytes("synthetic.gguf", &w.to_bytes(|_, _, _| Ok(())).unwrap()).unwrap()
}

fn strings(items: &[&str]) -> MetaValue {
    MetaValue::Array(
        items
            .iter()
            .map(|s| MetaValue::String(s.to_string()))
            .collect(),
    )
}

fn s(v: &str) -> MetaValue {
    MetaValue::String(v.into())
}

const BPE_TOKENS: &[&str] = &["a", "b", "c", "Ġ", "ab", "abc", "Ġa", "<|end|>"];
const BPE_MERGES: &[&str] = &["a b", "ab c", "Ġ a"];

fn bpe(extra: Vec<(&'static str, MetaValue)>) -> Vec<(&'static str, MetaValue)> {
    let mut meta = vec![
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.pre", s("gpt-2")),
        ("tokenizer.ggml.tokens", strings(BPE_TOKENS)),
        ("tokenizer.ggml.merges", strings(BPE_MERGES)),
        (
            "tokenizer.ggml.token_type",
            MetaValue::Array([1, 1, 1, 1, 1, 1, 1, 3].map(MetaValue::I32).to_vec()),
        ),
        ("tokenizer.ggml.bos_token_id", MetaValue::U32(7)),
        ("tokenizer.ggml.eos_token_id", MetaValue::U32(7)),
    ];
    for (k, v) in extra {
        meta.retain(|(key, _)| *key != k);
        meta.push((k, v));
    }
    meta
}

fn err(meta: Vec<(&str, MetaValue)>) -> TokenizerError {
    let e = Tokenizer::from_gguf(&gguf(meta)).unwrap_err();
    assert!(!e.to_string().is_empty());
    e
}

#[test]
fn bpe_merges_by_rank() {
    let tok = Tokenizer::from_gguf(&gguf(bpe(vec![]))).unwrap();
    // "abc" merges whole; " ab": "a b" (rank 0) wins over "Ġ a" (rank 2).
    assert_eq!(tok.encode("abc ab", false, false), vec![5, 3, 4]);
    assert_eq!(tok.decode(&[5, 3, 4]), "abc ab");
    assert_eq!(tok.encode("<|end|>", false, true), vec![7]);
    assert!(tok.is_end_of_generation(7));
    assert!(!tok.add_bos());
}

#[test]
fn spm_merges_by_score_with_byte_fallback() {
    let tokens = [
        "<unk>", "<s>", "</s>", "▁", "a", "b", "▁a", "ab", "▁ab", "<0xC3>", "<0xA9>",
    ];
    let scores = [0.0, 0.0, 0.0, -3.0, -4.0, -4.0, -1.0, -2.0, -0.5, 0.0, 0.0];
    let types = [2, 3, 3, 1, 1, 1, 1, 1, 1, 6, 6];
    let f = gguf(vec![
        ("tokenizer.ggml.model", s("llama")),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        (
            "tokenizer.ggml.scores",
            MetaValue::Array(scores.map(MetaValue::F32).to_vec()),
        ),
        (
            "tokenizer.ggml.token_type",
            MetaValue::Array(types.map(MetaValue::I32).to_vec()),
        ),
    ]);
    let tok = Tokenizer::from_gguf(&f).unwrap();
    assert!(tok.add_bos());
    assert_eq!(tok.bos(), Some(1));
    let ids = tok.encode("ab é", true, false);
    assert_eq!(ids, vec![1, 8, 3, 9, 10]);
    assert_eq!(tok.decode(&ids), " ab é");
    assert_eq!(tok.token_bytes(9), &[0xC3]);
    assert_eq!(tok.encode("<s>a", false, true), vec![1, 6]);
    // Not parsed: spelled out, and characters with no token or byte token become <unk>.
    assert_eq!(tok.encode("<s>a", false, false), vec![3, 0, 0, 0, 4]);
}

#[test]
fn missing_or_wrong_metadata_is_an_error() {
    let e = err(vec![("tokenizer.ggml.model", s("gpt2"))]);
    assert!(
        matches!(e, TokenizerError::MissingKey("tokenizer.ggml.tokens")),
        "{e}"
    );
    let e = err(vec![("tokenizer.ggml.tokens", strings(BPE_TOKENS))]);
    assert!(
        matches!(e, TokenizerError::MissingKey("tokenizer.ggml.model")),
        "{e}"
    );
    let e = err(bpe(vec![("tokenizer.ggml.model", s("wordpiece9"))]));
    assert!(matches!(e, TokenizerError::UnknownModel(_)), "{e}");
    let e = err(bpe(vec![("tokenizer.ggml.pre", s("mystery"))]));
    assert!(
        matches!(e, TokenizerError::UnknownPreTokenizer(_)) && e.to_string().contains("mystery"),
        "{e}"
    );
    let e = err(bpe(vec![(
        "tokenizer.ggml.tokens",
        MetaValue::Array(vec![MetaValue::U32(1)]),
    )]));
    assert!(matches!(e, TokenizerError::WrongType { .. }), "{e}");
    let e = err(bpe(vec![(
        "tokenizer.ggml.tokens",
        MetaValue::Array(vec![]),
    )]));
    assert!(matches!(e, TokenizerError::EmptyVocab), "{e}");
}

#[test]
fn bad_merges_are_an_error() {
    let mut meta = bpe(vec![]);
    meta.retain(|(k, _)| *k != "tokenizer.ggml.merges");
    assert!(matches!(
        err(meta),
        TokenizerError::MissingKey("tokenizer.ggml.merges")
    ));
    let e = err(bpe(vec![(
        "tokenizer.ggml.merges",
        strings(&["a b", "a zz"]),
    )]));
    assert!(
        matches!(e, TokenizerError::BadMerge { index: 1, .. }),
        "{e}"
    );
    let e = err(bpe(vec![("tokenizer.ggml.merges", strings(&["ab"]))]));
    assert!(
        matches!(e, TokenizerError::BadMerge { index: 0, .. }),
        "{e}"
    );
}

#[test]
fn bad_special_ids_are_an_error() {
    let e = err(bpe(vec![(
        "tokenizer.ggml.bos_token_id",
        MetaValue::U32(8),
    )]));
    assert!(
        matches!(e, TokenizerError::TokenIdOutOfRange { id: 8, .. }),
        "{e}"
    );
    let e = err(bpe(vec![(
        "tokenizer.ggml.eos_token_id",
        MetaValue::U64(u64::MAX),
    )]));
    assert!(matches!(e, TokenizerError::TokenIdOutOfRange { .. }), "{e}");
    // add_bos with no usable BOS id (the BPE default, 11, is past this vocabulary).
    let mut meta = bpe(vec![(
        "tokenizer.ggml.add_bos_token",
        MetaValue::Bool(true),
    )]);
    meta.retain(|(k, _)| *k != "tokenizer.ggml.bos_token_id");
    assert!(matches!(err(meta), TokenizerError::MissingSpecial { .. }));
}

#[test]
fn bad_vocab_arrays_are_an_error() {
    let e = err(bpe(vec![(
        "tokenizer.ggml.token_type",
        MetaValue::Array(vec![MetaValue::I32(1)]),
    )]));
    assert!(
        matches!(
            e,
            TokenizerError::LengthMismatch {
                got: 1,
                n_tokens: 8,
                ..
            }
        ),
        "{e}"
    );
    let mut dup = BPE_TOKENS.to_vec();
    dup[2] = "a";
    let e = err(bpe(vec![("tokenizer.ggml.tokens", strings(&dup))]));
    assert!(
        matches!(
            e,
            TokenizerError::DuplicateToken {
                first: 0,
                second: 2,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn phi3_special_tokens_swallow_following_whitespace() {
    let plain = Tokenizer::from_gguf(&gguf(bpe(vec![]))).unwrap();
    assert_eq!(plain.encode("<|end|> ab", false, true), vec![7, 3, 4]);
    let phi3 = Tokenizer::from_gguf(&gguf(bpe(vec![("general.name", s("Phi-3 Mini"))]))).unwrap();
    assert_eq!(phi3.encode("<|end|> \n ab", false, true), vec![7, 4]);
    assert!(format!("{phi3:?}").contains("vocab_size: 8"));
}
