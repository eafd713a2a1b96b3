//! Tokenizers built from GGUF metadata: GPT-2 byte-level BPE and SentencePiece.
