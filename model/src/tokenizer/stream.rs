//! Streaming detokenization: token pieces may end inside a UTF-8 sequence
//! (byte tokens, byte-level BPE), so text is handed out only once complete.

use super::Tokenizer;

/// Buffers piece bytes and yields complete UTF-8 text.
#[derive(Debug, Default, Clone)]
pub struct TextStream {
    pending: Vec<u8>,
}

impl TextStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a generated token (control tokens give no text) and returns the
    /// text that is now complete, possibly empty.
    pub fn push_token(&mut self, tokenizer: &Tokenizer, id: u32) -> String {
        self.push_bytes(tokenizer.piece(id))
    }

    /// Adds raw piece bytes and returns the text that is now complete. Bytes
    /// that can never be valid UTF-8 come out as U+FFFD; an incomplete sequence
    /// at the end waits for the next piece.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // `valid` is UTF-8 by the error's own account.
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            out.push('\u{FFFD}');
                            rest = &after[n..];
                        }
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }

    /// Whether bytes are waiting for the rest of a character.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Ends the stream: any incomplete sequence comes out as U+FFFD.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

/// A [`TextStream`] tied to a tokenizer: push generated token ids, get text.
#[derive(Debug, Clone)]
pub struct Detokenizer<'a> {
    tokenizer: &'a Tokenizer,
    stream: TextStream,
}

impl<'a> Detokenizer<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self {
            tokenizer,
            stream: TextStream::new(),
        }
    }

    /// Adds a generated token; returns the text now complete (control tokens give none).
    pub fn push(&mut self, id: u32) -> String {
        self.stream.push_token(self.tokenizer, id)
    }

    /// Ends the stream; an incomplete sequence comes out as U+FFFD.
    pub fn finish(&mut self) -> String {
        self.stream.finish()
    }
}

impl Tokenizer {
    /// A streaming detokenizer for generated tokens.
    pub fn text_stream(&self) -> Detokenizer<'_> {
        Detokenizer::new(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_multibyte_across_pushes() {
        let crab = "🦀".as_bytes();
        let mut s = TextStream::new();
        assert_eq!(s.push_bytes(&crab[..1]), "");
        assert_eq!(s.push_bytes(&crab[1..3]), "");
        assert!(s.has_pending());
        assert_eq!(s.push_bytes(&[crab[3], b'a']), "🦀a");
        assert!(!s.has_pending());
    }

    #[test]
    fn invalid_bytes_become_replacement() {
        let mut s = TextStream::new();
        assert_eq!(s.push_bytes(&[b'a', 0xFF, b'b']), "a\u{FFFD}b");
        assert_eq!(s.push_bytes(&[0xE2, 0x82]), "");
        assert_eq!(s.finish(), "\u{FFFD}");
    }
}
