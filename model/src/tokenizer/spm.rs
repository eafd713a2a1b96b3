//! SentencePiece by scores, as llama.cpp's `llm_tokenizer_spm_session`: start
//! from single characters, repeatedly merge the adjacent pair whose
//! concatenation is the highest-scoring token (leftmost on ties), and spell
//! whatever is left that is not a token as `<0xXX>` byte tokens.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::symbols::{merge, symbols_of, Symbol};
use super::Tokenizer;

#[derive(Debug)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

impl Ord for Bigram {
    /// Highest score first, then leftmost.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then(other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Tokenizes `text` (spaces already escaped as `▁`), appending to `out`.
pub(super) fn encode(tok: &Tokenizer, text: &str, out: &mut Vec<u32>) {
    let mut syms = symbols_of(text);
    if syms.is_empty() {
        return;
    }

    let mut queue = BinaryHeap::new();
    for i in 1..syms.len() {
        push_bigram(tok, text, &syms, i - 1, i, &mut queue);
    }
    while let Some(b) = queue.pop() {
        let (l, r) = (&syms[b.left], &syms[b.right]);
        if l.len == 0 || r.len == 0 || l.len + r.len != b.len {
            continue;
        }
        let (prev, r_next) = merge(&mut syms, b.left, b.right);
        if prev >= 0 {
            push_bigram(tok, text, &syms, prev as usize, b.left, &mut queue);
        }
        if r_next >= 0 {
            push_bigram(tok, text, &syms, b.left, r_next as usize, &mut queue);
        }
    }

    let mut i = 0isize;
    while i >= 0 {
        let s = &syms[i as usize];
        let piece = &text[s.start..s.start + s.len];
        match tok.lookup(piece) {
            Some(id) => out.push(id),
            None => {
                // Every merge made a token, so what is left is a single character
                // the vocabulary lacks: spell it in byte tokens.
                for &b in piece.as_bytes() {
                    match tok.byte_token(b) {
                        Some(id) => out.push(id),
                        None => out.extend(tok.unk()),
                    }
                }
            }
        }
        i = s.next;
    }
}

fn push_bigram(
    tok: &Tokenizer,
    text: &str,
    syms: &[Symbol],
    left: usize,
    right: usize,
    queue: &mut BinaryHeap<Bigram>,
) {
    let (l, r) = (&syms[left], &syms[right]);
    let len = l.len + r.len;
    let Some(id) = tok.lookup(&text[l.start..l.start + len]) else {
        return;
    };
    let score = tok.tokens[id as usize].score;
    queue.push(Bigram {
        score,
        left,
        right,
        len,
    });
}
