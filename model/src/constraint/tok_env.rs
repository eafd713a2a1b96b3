//! The model's vocabulary as llguidance sees it: a token trie over each
//! token's bytes. Control tokens are marked with llguidance's 0xFF prefix
//! (as llama.cpp's integration does) so text in a grammar never matches
//! `<|im_end|>` by accident; the end-of-generation tokens are the trie's
//! EOS set, so a finished grammar lets exactly those through.

use std::sync::Arc;

use toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use crate::tokenizer::Tokenizer;

struct VocabEnv {
    trie: TokTrie,
}

impl TokenizerEnv for VocabEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.greedy_tokenize(s)
    }

    /// Greedy tokenization is not the model's: llguidance must not force
    /// tokens from it.
    fn tokenize_is_canonical(&self) -> bool {
        false
    }
}

/// Builds the token environment of `tok` (a few milliseconds for 150k tokens).
pub fn token_env(tok: &Tokenizer) -> TokEnv {
    let eog: Vec<u32> = tok.end_of_generation_tokens().collect();
    let eos = eog.first().copied().or(tok.eos()).unwrap_or(0);
    let words: Vec<Vec<u8>> = (0..tok.vocab_size() as u32)
        .map(|id| {
            let bytes = tok.token_bytes(id);
            if tok.is_control(id) || eog.contains(&id) {
                let mut marked = Vec::with_capacity(bytes.len() + 1);
                marked.push(TokTrie::SPECIAL_TOKEN_MARKER);
                marked.extend_from_slice(bytes);
                marked
            } else {
                bytes.to_vec()
            }
        })
        .collect();
    let info = TokRxInfo::new(tok.vocab_size() as u32, eos);
    let mut trie = TokTrie::from(&info, &words);
    if !eog.is_empty() {
        trie = trie.with_eos_tokens(&eog);
    }
    Arc::new(VocabEnv { trie })
}
