//! GPT-2 byte-level BPE, as llama.cpp's `llm_tokenizer_bpe_session`.
//!
//! The text is split by the pre-tokenizer regexes chosen by
//! `tokenizer.ggml.pre` (each regex splits the pieces the previous one left,
//! and text a regex does not match stays a piece of its own), each piece is
//! mapped byte by byte onto GPT-2's printable characters, and merges are applied
//! lowest rank first.
//!
//! Gemma 4's BPE (llama.cpp's pre-type `GEMMA4`) works on SentencePiece-style
//! text instead: spaces become `▁`, the text is split only into runs of
//! newlines and runs of the rest, pieces stay raw UTF-8, a newline run that is
//! a token is taken whole, and what no merge reaches is spelled in `<0xXX>`
//! byte tokens.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use fancy_regex::Regex;

use super::symbols::{merge, symbols_of, Symbol};
use super::{Tokenizer, TokenizerError};
use crate::gguf::MetaValue;

const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's, with combining marks (`\p{M}`) inside letter runs.
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Gemma 4 (SentencePiece-style BPE): runs of newlines and runs of the rest.
const NEWLINE_RUNS: &str = r"[^\n]+|[\n]+";

/// A pre-tokenizer: the regexes llama.cpp applies for a `tokenizer.ggml.pre` name.
pub struct PreTokenizer {
    name: String,
    regexes: Vec<Regex>,
    /// llama.cpp's `ignore_merges`: a piece that is a whole token is taken as is.
    ignore_merges: bool,
    /// llama.cpp turns BOS on by default for some pre-tokenizers.
    add_bos: bool,
    /// The SentencePiece-style BPE of Gemma 4 (llama.cpp's pre-type `GEMMA4`).
    spm_style: bool,
}

impl std::fmt::Debug for PreTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreTokenizer")
            .field("name", &self.name)
            .field("ignore_merges", &self.ignore_merges)
            .field("spm_style", &self.spm_style)
            .finish()
    }
}

impl PreTokenizer {
    /// The pre-tokenizer for a `tokenizer.ggml.pre` name; unknown names are an error.
    pub fn from_name(name: &str) -> Result<Self, TokenizerError> {
        let (exprs, ignore_merges, add_bos): (&[&str], bool, bool) = match name {
            "default" => (
                &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"],
                false,
                false,
            ),
            // "gpt2" is not a llama.cpp name, but the tokenizer model's; accept it as "gpt-2".
            "gpt2" | "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "trillion" | "exaone4"
            | "mellum" => (&[GPT2], false, false),
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva-7b" => (&[r"\p{N}", GPT2], false, false),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => (&[LLAMA3], true, true),
            "dbrx" | "smaug-bpe" => (&[LLAMA3], false, false),
            "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "megrez" => (&[QWEN2], false, false),
            "qwen35" => (&[QWEN35], false, false),
            "gemma4" => (&[NEWLINE_RUNS], false, false),
            other => return Err(TokenizerError::UnknownPreTokenizer(other.to_string())),
        };
        let regexes = exprs
            .iter()
            .map(|e| Regex::new(e).map_err(|err| TokenizerError::Regex(format!("{e}: {err}"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            name: name.to_string(),
            regexes,
            ignore_merges,
            add_bos,
            spm_style: name == "gemma4",
        })
    }

    pub(super) fn adds_bos_by_default(&self) -> bool {
        self.add_bos
    }

    /// Splits `text` into pre-tokens (byte ranges), as llama.cpp's `unicode_regex_split`.
    pub fn split<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut pieces = vec![text];
        for re in &self.regexes {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for piece in pieces {
                let mut last = 0;
                let mut pos = 0;
                while pos < piece.len() {
                    let m = match re.find_from_pos(piece, pos) {
                        Ok(Some(m)) => m,
                        // No match, or a regex that backtracked too far: the rest stays one piece.
                        Ok(None) | Err(_) => break,
                    };
                    if m.start() == m.end() {
                        // Empty match: step one character on.
                        pos = m.end() + piece[m.end()..].chars().next().map_or(1, char::len_utf8);
                        continue;
                    }
                    if m.start() > last {
                        next.push(&piece[last..m.start()]);
                    }
                    next.push(m.as_str());
                    last = m.end();
                    pos = m.end();
                }
                if last < piece.len() {
                    next.push(&piece[last..]);
                }
            }
            pieces = next;
        }
        pieces
    }
}

/// GPT-2's byte → printable character table.
pub(super) fn byte_to_char(b: u8) -> char {
    let printable = |b: u8| {
        (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    if printable(b) {
        return char::from(b);
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap_or('\u{FFFD}')
}

/// The inverse of [`byte_to_char`]; `None` for a character outside the table.
fn char_to_byte(c: char) -> Option<u8> {
    static TABLE: std::sync::OnceLock<HashMap<char, u8>> = std::sync::OnceLock::new();
    TABLE
        .get_or_init(|| (0..=255u8).map(|b| (byte_to_char(b), b)).collect())
        .get(&c)
        .copied()
}

/// A byte-level token's text back to bytes (llama.cpp's `llama_decode_text`).
pub(super) fn decode_byte_level(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                // llama.cpp writes an `[UNK_BYTE_0x…]` marker here; keep the character.
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

/// The BPE model: pre-tokenizer plus merge ranks.
#[derive(Debug)]
pub(super) struct Bpe {
    pre: PreTokenizer,
    /// (left token id, right token id) → rank.
    ranks: HashMap<(u32, u32), u32>,
}

impl Bpe {
    pub(super) fn new(
        pre: PreTokenizer,
        merges: &[MetaValue],
        token_to_id: &HashMap<String, u32>,
    ) -> Result<Self, TokenizerError> {
        let mut ranks = HashMap::with_capacity(merges.len());
        for (i, m) in merges.iter().enumerate() {
            let merge = m.as_str().ok_or(TokenizerError::WrongType {
                key: super::KEY_MERGES,
                expected: "array of strings",
            })?;
            let bad = || TokenizerError::BadMerge {
                index: i,
                merge: merge.to_string(),
            };
            // llama.cpp splits at the first space after the first byte.
            let pos = merge
                .bytes()
                .skip(1)
                .position(|b| b == b' ')
                .map(|p| p + 1)
                .ok_or_else(bad)?;
            let (left, right) = (&merge[..pos], &merge[pos + 1..]);
            let (Some(&l), Some(&r)) = (token_to_id.get(left), token_to_id.get(right)) else {
                return Err(bad());
            };
            ranks.entry((l, r)).or_insert(i as u32);
        }
        Ok(Self { pre, ranks })
    }

    /// Whether the vocabulary is SentencePiece-style (Gemma 4): spaces written
    /// as `▁`, raw UTF-8 instead of GPT-2's byte characters, `<0xXX>` byte
    /// fallback, and BOS always added (llama.cpp overrides
    /// `tokenizer.ggml.add_bos_token = false` for it).
    pub(super) fn spm_style(&self) -> bool {
        self.pre.spm_style
    }

    /// Tokenizes one raw-text fragment, appending to `out`.
    pub(super) fn encode(&self, tok: &Tokenizer, text: &str, out: &mut Vec<u32>) {
        if self.pre.spm_style {
            let escaped = text.replace(' ', "\u{2581}");
            for piece in self.pre.split(&escaped) {
                // llama.cpp (PR 21343): a run of newlines that is a token stays whole.
                if piece.bytes().all(|b| b == b'\n') {
                    if let Some(id) = tok.lookup(piece) {
                        out.push(id);
                        continue;
                    }
                }
                self.encode_word(tok, piece, out);
            }
            return;
        }
        let mut word = String::new();
        for piece in self.pre.split(text) {
            word.clear();
            word.extend(piece.bytes().map(byte_to_char));
            self.encode_word(tok, &word, out);
        }
    }

    fn encode_word(&self, tok: &Tokenizer, word: &str, out: &mut Vec<u32>) {
        if self.pre.ignore_merges {
            if let Some(id) = tok.lookup(word) {
                out.push(id);
                return;
            }
        }
        let mut syms = symbols_of(word);
        if syms.is_empty() {
            return;
        }

        let mut queue = BinaryHeap::new();
        for i in 1..syms.len() {
            self.push_bigram(tok, word, &syms, i - 1, i, &mut queue);
        }
        while let Some(b) = queue.pop() {
            let (l, r) = (&syms[b.left], &syms[b.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != b.len || l.next != b.right as isize {
                continue;
            }
            let (prev, r_next) = merge(&mut syms, b.left, b.right);
            if prev >= 0 {
                self.push_bigram(tok, word, &syms, prev as usize, b.left, &mut queue);
            }
            if r_next >= 0 {
                self.push_bigram(tok, word, &syms, b.left, r_next as usize, &mut queue);
            }
        }
        let mut i = 0isize;
        while i >= 0 {
            let s = &syms[i as usize];
            let text = &word[s.start..s.start + s.len];
            match tok.lookup(text) {
                Some(id) => out.push(id),
                None if self.pre.spm_style => {
                    // llama.cpp: each byte as its `<0xXX>` token, where there is one.
                    out.extend(text.bytes().filter_map(|b| tok.byte_token(b)));
                }
                None => {
                    // llama.cpp: each character on its own, where it is a token.
                    for c in text.chars() {
                        if let Some(id) = tok.lookup(c.encode_utf8(&mut [0u8; 4])) {
                            out.push(id);
                        }
                    }
                }
            }
            i = s.next;
        }
    }

    fn push_bigram(
        &self,
        tok: &Tokenizer,
        word: &str,
        syms: &[Symbol],
        left: usize,
        right: usize,
        queue: &mut BinaryHeap<Bigram>,
    ) {
        let (l, r) = (&syms[left], &syms[right]);
        let (Some(lid), Some(rid)) = (
            tok.lookup(&word[l.start..l.start + l.len]),
            tok.lookup(&word[r.start..r.start + r.len]),
        ) else {
            return;
        };
        if let Some(&rank) = self.ranks.get(&(lid, rid)) {
            queue.push(Bigram {
                rank,
                left,
                right,
                len: l.len + r.len,
            });
        }
    }
}

/// A candidate merge; the heap pops the lowest rank, then the leftmost.
#[derive(Debug, PartialEq, Eq)]
struct Bigram {
    rank: u32,
    left: usize,
    right: usize,
    len: usize,
}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        other.rank.cmp(&self.rank).then(other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_round_trips() {
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
    }

    #[test]
    fn smollm_splits_digits_and_spaces() {
        let pre = PreTokenizer::from_name("smollm").unwrap();
        assert_eq!(pre.split("ab 12  x"), vec!["ab", " ", "1", "2", " ", " x"]);
    }

    #[test]
    fn supported_pre_tokenizers_compile() {
        for name in [
            "default",
            "gpt2",
            "gpt-2",
            "smollm",
            "starcoder",
            "llama3",
            "llama-bpe",
            "qwen2",
            "qwen35",
            "gemma4",
            "dbrx",
        ] {
            PreTokenizer::from_name(name).unwrap();
        }
        let llama3 = PreTokenizer::from_name("llama3").unwrap();
        assert_eq!(
            llama3.split("I'm 12345 ok\n\n x"),
            vec!["I", "'m", " ", "123", "45", " ok", "\n\n", " x"]
        );
        let qwen2 = PreTokenizer::from_name("qwen2").unwrap();
        assert_eq!(qwen2.split("ab 12"), vec!["ab", " ", "1", "2"]);
    }

    #[test]
    fn qwen35_keeps_combining_marks_in_words() {
        let text = "cafe\u{301}s 12";
        let qwen2 = PreTokenizer::from_name("qwen2").unwrap();
        assert_eq!(qwen2.split(text), vec!["cafe", "\u{301}s", " ", "1", "2"]);
        let qwen35 = PreTokenizer::from_name("qwen35").unwrap();
        assert_eq!(qwen35.split(text), vec!["cafe\u{301}s", " ", "1", "2"]);
    }

    #[test]
    fn gemma4_splits_only_at_newline_runs() {
        let pre = PreTokenizer::from_name("gemma4").unwrap();
        assert_eq!(pre.split("a b\n\nc\n"), vec!["a b", "\n\n", "c", "\n"]);
    }

    #[test]
    fn unknown_pre_is_an_error() {
        assert!(matches!(
            PreTokenizer::from_name("nope"),
            Err(TokenizerError::UnknownPreTokenizer(_))
        ));
    }
}
