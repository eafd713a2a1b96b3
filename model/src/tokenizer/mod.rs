//! Tokenizers built from GGUF metadata, matching llama.cpp (`src/llama-vocab.cpp`).
//!
//! - `tokenizer.ggml.model = "gpt2"`: byte-level BPE ([`bpe`]), pre-tokenized with
//!   the regexes llama.cpp uses for `tokenizer.ggml.pre`.
//! - `tokenizer.ggml.model = "gemma4"`: BPE over SentencePiece-style pieces
//!   (`▁` for spaces, raw UTF-8, `<0xXX>` byte fallback), split only at
//!   newline runs ([`bpe`]).
//! - `tokenizer.ggml.model = "llama"`: SentencePiece by scores ([`spm`]), with
//!   `<0xXX>` byte fallback.
//!
//! Special tokens (control, user-defined, unknown) are split out of the text
//! before the model runs, longest first, as llama.cpp does; control and unknown
//! tokens only when the caller asks to parse them. Decoding goes through a
//! per-token piece table; [`TextStream`] turns pieces into complete UTF-8 text.

mod bpe;
mod special;
mod spm;
mod stream;
mod symbols;

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::gguf::{GgufFile, MetaValue};

pub use bpe::PreTokenizer;
pub use stream::{Detokenizer, TextStream};

/// What went wrong building a tokenizer from metadata.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer metadata: key `{0}` is missing")]
    MissingKey(&'static str),
    #[error("tokenizer metadata: key `{key}` has the wrong type (expected {expected})")]
    WrongType {
        key: &'static str,
        expected: &'static str,
    },
    #[error("tokenizer metadata: unknown tokenizer model `{0}` (supported: gpt2, llama, gemma4)")]
    UnknownModel(String),
    #[error(
        "tokenizer metadata: unknown pre-tokenizer `{0}` (supported: default, gpt2, gpt-2, llama3, llama-bpe, \
         llama-v3, qwen2, qwen35, smollm, starcoder, refact, command-r, …)"
    )]
    UnknownPreTokenizer(String),
    #[error(
        "tokenizer metadata: `{key}` has {got} entries but the vocabulary has {n_tokens} tokens"
    )]
    LengthMismatch {
        key: &'static str,
        got: usize,
        n_tokens: usize,
    },
    #[error("tokenizer metadata: duplicate token {text:?} at ids {first} and {second}")]
    DuplicateToken {
        text: String,
        first: u32,
        second: u32,
    },
    #[error(
        "tokenizer metadata: `{key}` = {id} is out of range for a vocabulary of {n_tokens} tokens"
    )]
    TokenIdOutOfRange {
        key: &'static str,
        id: u64,
        n_tokens: usize,
    },
    #[error(
        "tokenizer metadata: merge {index} ({merge:?}) is not two tokens separated by a space"
    )]
    BadMerge { index: usize, merge: String },
    #[error("tokenizer metadata: byte token for 0x{byte:02X} is missing from the vocabulary")]
    MissingByteToken { byte: u8 },
    #[error("tokenizer metadata: `{key}` is true but `{id_key}` is not set")]
    MissingSpecial {
        key: &'static str,
        id_key: &'static str,
    },
    #[error("tokenizer metadata: vocabulary is empty")]
    EmptyVocab,
    #[error("pre-tokenizer regex failed: {0}")]
    Regex(String),
}

/// Token attributes, as llama.cpp's `llama_token_attr` bits.
pub mod attr {
    pub const UNDEFINED: u32 = 0;
    pub const UNKNOWN: u32 = 1 << 0;
    pub const UNUSED: u32 = 1 << 1;
    pub const NORMAL: u32 = 1 << 2;
    pub const CONTROL: u32 = 1 << 3;
    pub const USER_DEFINED: u32 = 1 << 4;
    pub const BYTE: u32 = 1 << 5;
    pub const LSTRIP: u32 = 1 << 7;
    pub const RSTRIP: u32 = 1 << 8;
}

/// One vocabulary entry.
#[derive(Debug, Clone)]
struct TokenData {
    text: String,
    score: f32,
    attr: u32,
}

/// Which algorithm turns a text fragment into tokens.
#[derive(Debug)]
enum Model {
    Bpe(bpe::Bpe),
    Spm,
}

/// A tokenizer for one model's vocabulary.
pub struct Tokenizer {
    model: Model,
    tokens: Vec<TokenData>,
    token_to_id: HashMap<String, u32>,
    /// Control, user-defined and unknown tokens, longest text first.
    special_tokens: Vec<u32>,
    /// Each token's bytes as llama.cpp's `token_to_piece(special = true)` gives them.
    pieces: Vec<Vec<u8>>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    unk: Option<u32>,
    eog: BTreeSet<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
}

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_PRE: &str = "tokenizer.ggml.pre";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_SCORES: &str = "tokenizer.ggml.scores";
const KEY_TYPES: &str = "tokenizer.ggml.token_type";
const KEY_MERGES: &str = "tokenizer.ggml.merges";
const KEY_BOS: &str = "tokenizer.ggml.bos_token_id";
const KEY_EOS: &str = "tokenizer.ggml.eos_token_id";
const KEY_EOT: &str = "tokenizer.ggml.eot_token_id";
const KEY_EOM: &str = "tokenizer.ggml.eom_token_id";
const KEY_UNK: &str = "tokenizer.ggml.unknown_token_id";
const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const KEY_ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
const KEY_ADD_PREFIX: &str = "tokenizer.ggml.add_space_prefix";

fn string_array<'a>(
    f: &'a GgufFile,
    key: &'static str,
) -> Result<Option<&'a [MetaValue]>, TokenizerError> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => v.as_array().map(Some).ok_or(TokenizerError::WrongType {
            key,
            expected: "array",
        }),
    }
}

/// Reads an optional token id; an id past the vocabulary is an error.
fn token_id(
    f: &GgufFile,
    key: &'static str,
    n_tokens: usize,
) -> Result<Option<u32>, TokenizerError> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => {
            let id = v.as_u64().ok_or(TokenizerError::WrongType {
                key,
                expected: "unsigned integer",
            })?;
            if id >= n_tokens as u64 {
                return Err(TokenizerError::TokenIdOutOfRange { key, id, n_tokens });
            }
            Ok(Some(id as u32))
        }
    }
}

fn merges(f: &GgufFile) -> Result<&[MetaValue], TokenizerError> {
    string_array(f, KEY_MERGES)?.ok_or(TokenizerError::MissingKey(KEY_MERGES))
}

fn flag(f: &GgufFile, key: &'static str) -> Result<Option<bool>, TokenizerError> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or(TokenizerError::WrongType {
            key,
            expected: "bool",
        }),
    }
}

/// llama.cpp's `tokenizer.ggml.token_type` values mapped to attribute bits.
fn attr_from_type(t: i64) -> u32 {
    match t {
        1 => attr::NORMAL,
        2 => attr::UNKNOWN,
        3 => attr::CONTROL,
        4 => attr::USER_DEFINED,
        5 => attr::UNUSED,
        6 => attr::BYTE,
        _ => attr::UNDEFINED,
    }
}

impl Tokenizer {
    /// Builds the tokenizer that the GGUF's `tokenizer.ggml.*` metadata describes.
    pub fn from_gguf(f: &GgufFile) -> Result<Self, TokenizerError> {
        let model_name = match f.get(KEY_MODEL) {
            None => return Err(TokenizerError::MissingKey(KEY_MODEL)),
            Some(v) => v.as_str().ok_or(TokenizerError::WrongType {
                key: KEY_MODEL,
                expected: "string",
            })?,
        };
        let tokens = Self::read_vocab(f)?;
        let n_tokens = tokens.len();
        let mut token_to_id = HashMap::with_capacity(n_tokens);
        for (i, t) in tokens.iter().enumerate() {
            if let Some(first) = token_to_id.insert(t.text.clone(), i as u32) {
                return Err(TokenizerError::DuplicateToken {
                    text: t.text.clone(),
                    first,
                    second: i as u32,
                });
            }
        }

        // Defaults as llama.cpp sets them per model type.
        let (model, default_bos, default_eos, default_unk, mut add_bos, mut add_space_prefix) =
            match model_name {
                "gpt2" => {
                    let pre_name = match f.get(KEY_PRE) {
                        None => "default",
                        Some(v) => v.as_str().ok_or(TokenizerError::WrongType {
                            key: KEY_PRE,
                            expected: "string",
                        })?,
                    };
                    let pre = PreTokenizer::from_name(pre_name)?;
                    let add_bos = pre.adds_bos_by_default();
                    let bpe = bpe::Bpe::new(pre, merges(f)?, &token_to_id)?;
                    (
                        Model::Bpe(bpe),
                        Some(11u32),
                        Some(11u32),
                        None,
                        add_bos,
                        false,
                    )
                }
                // llama.cpp ignores `tokenizer.ggml.pre` here and sets no default ids.
                "gemma4" => {
                    let pre = PreTokenizer::from_name("gemma4")?;
                    let bpe = bpe::Bpe::new(pre, merges(f)?, &token_to_id)?;
                    (Model::Bpe(bpe), None, None, None, false, false)
                }
                "llama" => (Model::Spm, Some(1), Some(2), Some(0), true, true),
                other => return Err(TokenizerError::UnknownModel(other.to_string())),
            };
        if let Some(v) = flag(f, KEY_ADD_PREFIX)? {
            add_space_prefix = v;
        }
        let in_range = |id: Option<u32>| id.filter(|&id| (id as usize) < n_tokens);
        let bos = token_id(f, KEY_BOS, n_tokens)?.or_else(|| in_range(default_bos));
        let eos = token_id(f, KEY_EOS, n_tokens)?.or_else(|| in_range(default_eos));
        let unk = token_id(f, KEY_UNK, n_tokens)?.or_else(|| in_range(default_unk));
        let eot = token_id(f, KEY_EOT, n_tokens)?;
        let eom = token_id(f, KEY_EOM, n_tokens)?;
        if let Some(v) = flag(f, KEY_ADD_BOS)? {
            add_bos = v;
        }
        if matches!(&model, Model::Bpe(b) if b.spm_style()) {
            add_bos = true;
        }
        let add_eos = flag(f, KEY_ADD_EOS)?.unwrap_or(false);
        if add_bos && bos.is_none() {
            return Err(TokenizerError::MissingSpecial {
                key: KEY_ADD_BOS,
                id_key: KEY_BOS,
            });
        }
        if add_eos && eos.is_none() {
            return Err(TokenizerError::MissingSpecial {
                key: KEY_ADD_EOS,
                id_key: KEY_EOS,
            });
        }

        let mut tokens = tokens;
        let (eot, eog) = special::end_tokens(&mut tokens, &token_to_id, eos, eot, eom);

        let mut special_tokens: Vec<u32> = (0..n_tokens as u32)
            .filter(|&id| {
                tokens[id as usize].attr & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
            })
            .collect();
        special_tokens.sort_by(|&a, &b| {
            tokens[b as usize]
                .text
                .len()
                .cmp(&tokens[a as usize].text.len())
        });
        special::set_strip_attrs(f, &mut tokens, &token_to_id, &special_tokens);

        let mut tok = Tokenizer {
            model,
            tokens,
            token_to_id,
            special_tokens,
            pieces: Vec::new(),
            bos,
            eos,
            eot,
            unk,
            eog,
            add_bos,
            add_eos,
            add_space_prefix,
        };
        tok.pieces = (0..n_tokens as u32)
            .map(|id| tok.compute_piece(id))
            .collect();
        Ok(tok)
    }

    fn read_vocab(f: &GgufFile) -> Result<Vec<TokenData>, TokenizerError> {
        let texts = string_array(f, KEY_TOKENS)?.ok_or(TokenizerError::MissingKey(KEY_TOKENS))?;
        if texts.is_empty() {
            return Err(TokenizerError::EmptyVocab);
        }
        let n = texts.len();
        let scores = string_array(f, KEY_SCORES)?;
        let types = string_array(f, KEY_TYPES)?;
        for (key, arr) in [(KEY_SCORES, scores), (KEY_TYPES, types)] {
            if let Some(a) = arr {
                if a.len() < n {
                    return Err(TokenizerError::LengthMismatch {
                        key,
                        got: a.len(),
                        n_tokens: n,
                    });
                }
            }
        }
        let mut out = Vec::with_capacity(n);
        for (i, t) in texts.iter().enumerate() {
            let text = t.as_str().ok_or(TokenizerError::WrongType {
                key: KEY_TOKENS,
                expected: "array of strings",
            })?;
            let text = if text.is_empty() {
                format!("[EMPTY_{i}]")
            } else {
                text.to_string()
            };
            let score = match scores {
                None => 0.0,
                Some(s) => s[i].as_f64().ok_or(TokenizerError::WrongType {
                    key: KEY_SCORES,
                    expected: "numbers",
                })? as f32,
            };
            let attr = match types {
                None => attr::NORMAL,
                Some(ty) => attr_from_type(ty[i].as_i64().ok_or(TokenizerError::WrongType {
                    key: KEY_TYPES,
                    expected: "integers",
                })?),
            };
            out.push(TokenData { text, score, attr });
        }
        Ok(out)
    }

    /// llama.cpp's `token_to_piece(special = true)`.
    fn compute_piece(&self, id: u32) -> Vec<u8> {
        let t = &self.tokens[id as usize];
        if t.attr & (attr::CONTROL | attr::UNKNOWN | attr::USER_DEFINED) != 0 {
            return t.text.as_bytes().to_vec();
        }
        if t.attr & attr::NORMAL != 0 {
            return match &self.model {
                Model::Spm => t.text.replace('\u{2581}', " ").into_bytes(),
                Model::Bpe(b) if b.spm_style() => t.text.replace('\u{2581}', " ").into_bytes(),
                Model::Bpe(_) => bpe::decode_byte_level(&t.text),
            };
        }
        if t.attr & attr::BYTE != 0 {
            if let Some(b) = parse_byte_token(&t.text) {
                return vec![b];
            }
        }
        Vec::new()
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The beginning-of-sequence token, if the vocabulary has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence token, if the vocabulary has one.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// The end-of-turn token (`<|im_end|>`, `<end_of_turn>`, …), if any.
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }

    /// The unknown token, if the vocabulary has one.
    pub fn unk(&self) -> Option<u32> {
        self.unk
    }

    /// Whether the model asks for BOS at the start of a prompt.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether the model asks for EOS at the end of a prompt.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// Whether generating `id` ends generation (EOS, EOT, EOM and llama.cpp's EOG list).
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// All end-of-generation tokens.
    pub fn end_of_generation_tokens(&self) -> impl Iterator<Item = u32> + '_ {
        self.eog.iter().copied()
    }

    /// Whether `id` is a control token (rendered only when asked for).
    pub fn is_control(&self, id: u32) -> bool {
        self.attr(id) & attr::CONTROL != 0
    }

    /// The token's llama.cpp attribute bits ([`attr`]); 0 for an id out of range.
    pub fn attr(&self, id: u32) -> u32 {
        self.tokens.get(id as usize).map_or(0, |t| t.attr)
    }

    /// The token's text as stored in the vocabulary (`Ġ`/`▁` and all).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(|t| t.text.as_str())
    }

    /// The id of a token text, if the vocabulary has it.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    /// The bytes a token stands for, control tokens rendered as their text.
    /// A piece may be a partial UTF-8 sequence; see [`TextStream`]. Empty for
    /// an id out of range.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.pieces.get(id as usize).map_or(&[], |p| p.as_slice())
    }

    /// The bytes a token contributes to generated text: as [`Self::token_bytes`],
    /// but control and unknown tokens give nothing (llama.cpp's `special = false`).
    pub fn piece(&self, id: u32) -> &[u8] {
        if self.attr(id) & (attr::CONTROL | attr::UNKNOWN) != 0 {
            return &[];
        }
        self.token_bytes(id)
    }

    /// Decodes tokens to text as llama-server streams it: pieces concatenated,
    /// control tokens left out, invalid UTF-8 replaced by U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(self.piece(id));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Decodes tokens with control tokens rendered as their text.
    pub fn decode_with_special(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(self.token_bytes(id));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Tokenizes `text`. With `add_bos`, BOS is prepended (and EOS appended)
    /// where the model's metadata asks for it; with `parse_special`, control
    /// token texts such as `<|im_start|>` become their tokens. User-defined
    /// tokens are always recognised, as in llama.cpp.
    pub fn encode(&self, text: &str, add_bos: bool, parse_special: bool) -> Vec<u32> {
        let fragments = self.partition(text, parse_special);
        let mut out = Vec::new();
        if add_bos && self.add_bos {
            out.extend(self.bos);
        }
        match &self.model {
            Model::Bpe(b) => {
                for frag in &fragments {
                    match *frag {
                        Fragment::Text(s, e) => b.encode(self, &text[s..e], &mut out),
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
            Model::Spm => {
                let mut prev_special = true;
                for frag in &fragments {
                    match *frag {
                        Fragment::Text(s, e) => {
                            let mut piece = String::with_capacity(e - s + 1);
                            if self.add_space_prefix && prev_special {
                                piece.push(' ');
                            }
                            piece.push_str(&text[s..e]);
                            let escaped = piece.replace(' ', "\u{2581}");
                            spm::encode(self, &escaped, &mut out);
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
        }
        if add_bos && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    /// Splits special token texts out of `text`, longest token first
    /// (llama.cpp's `tokenizer_st_partition`).
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut frags = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Fragment::Text(0, text.len()));
        // A token whose first four bytes are nowhere in the text cannot occur in it:
        // a cheap filter for vocabularies with thousands of special tokens.
        let windows: HashSet<[u8; 4]> = text
            .as_bytes()
            .windows(4)
            .map(|w| [w[0], w[1], w[2], w[3]])
            .collect();
        for &id in &self.special_tokens {
            let data = &self.tokens[id as usize];
            if !parse_special && data.attr & (attr::CONTROL | attr::UNKNOWN) != 0 {
                continue;
            }
            let needle = data.text.as_str();
            if let Some(&[a, b, c, d]) = needle.as_bytes().get(..4) {
                if !windows.contains(&[a, b, c, d]) {
                    continue;
                }
            }
            if !frags
                .iter()
                .any(|f| matches!(*f, Fragment::Text(s, e) if text[s..e].contains(needle)))
            {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for frag in frags {
                let Fragment::Text(mut start, end) = frag else {
                    next.push(frag);
                    continue;
                };
                while let Some(pos) = text[start..end].find(needle) {
                    let m = start + pos;
                    let mut left_end = m;
                    if data.attr & attr::LSTRIP != 0 {
                        while left_end > start && is_c_space(text.as_bytes()[left_end - 1]) {
                            left_end -= 1;
                        }
                    }
                    if left_end > start {
                        next.push(Fragment::Text(start, left_end));
                    }
                    next.push(Fragment::Token(id));
                    start = m + needle.len();
                    if data.attr & attr::RSTRIP != 0 {
                        while start < end && is_c_space(text.as_bytes()[start]) {
                            start += 1;
                        }
                    }
                }
                if start < end {
                    next.push(Fragment::Text(start, end));
                }
            }
            frags = next;
        }
        frags
    }

    /// A token's id by text, for the BPE and SPM sessions.
    fn lookup(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    /// The token for a raw byte: `<0xXX>` for SentencePiece and Gemma 4's
    /// BPE, the byte-level character for GPT-2's; `None` if the vocabulary lacks it.
    fn byte_token(&self, byte: u8) -> Option<u32> {
        match &self.model {
            Model::Bpe(b) if b.spm_style() => self.lookup(&format!("<0x{byte:02X}>")),
            Model::Spm => self.lookup(&format!("<0x{byte:02X}>")).or_else(|| {
                std::str::from_utf8(&[byte])
                    .ok()
                    .and_then(|s| self.lookup(s))
            }),
            Model::Bpe(_) => self.lookup(bpe::byte_to_char(byte).encode_utf8(&mut [0u8; 4])),
        }
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let model = match &self.model {
            Model::Bpe(b) => format!("{b:?}"),
            Model::Spm => "Spm".to_string(),
        };
        f.debug_struct("Tokenizer")
            .field("model", &model)
            .field("vocab_size", &self.tokens.len())
            .field("special_tokens", &self.special_tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eot", &self.eot)
            .field("eog", &self.eog)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .field("add_space_prefix", &self.add_space_prefix)
            .finish()
    }
}

/// C's `isspace` in the "C" locale, which llama.cpp strips with.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

/// A piece of the input: raw text (byte range) or an already-recognised token.
#[derive(Debug, Clone, Copy)]
enum Fragment {
    Text(usize, usize),
    Token(u32),
}

/// `<0xAB>` → 0xAB.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Tokenizer>();
        assert_send_sync::<crate::chat::ChatTemplate>();
    }

    #[test]
    fn byte_tokens_parse() {
        assert_eq!(parse_byte_token("<0x0A>"), Some(10));
        assert_eq!(parse_byte_token("<0xFF>"), Some(255));
        assert_eq!(parse_byte_token("<0xF>"), None);
        assert_eq!(parse_byte_token("a"), None);
    }
}
