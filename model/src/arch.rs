//! Architecture hyper-parameters from GGUF metadata.
