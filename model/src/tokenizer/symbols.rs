//! The linked list of symbols that both merge-based tokenizers (BPE by
//! rank, SentencePiece by score) work on, as llama.cpp's `llm_symbol`.

/// A byte range of the text, linked to its live neighbours (-1: none).
#[derive(Debug, Clone, Copy)]
pub(super) struct Symbol {
    pub start: usize,
    pub len: usize,
    pub prev: isize,
    pub next: isize,
}

/// One symbol per character of `text`, linked in order.
pub(super) fn symbols_of(text: &str) -> Vec<Symbol> {
    let mut syms: Vec<Symbol> = text
        .char_indices()
        .enumerate()
        .map(|(i, (start, c))| Symbol {
            start,
            len: c.len_utf8(),
            prev: i as isize - 1,
            next: i as isize + 1,
        })
        .collect();
    if let Some(last) = syms.last_mut() {
        last.next = -1;
    }
    syms
}

/// Merges symbol `right` into its left neighbour `left`. Returns the
/// neighbours of the merged symbol (previous, next), whose bigrams with it
/// are the new merge candidates.
pub(super) fn merge(syms: &mut [Symbol], left: usize, right: usize) -> (isize, isize) {
    let (r_len, r_next) = (syms[right].len, syms[right].next);
    syms[left].len += r_len;
    syms[right].len = 0;
    syms[left].next = r_next;
    if r_next >= 0 {
        syms[r_next as usize].prev = left as isize;
    }
    (syms[left].prev, r_next)
}
