//! The GGUF reader on the real test models.
use strata_model::{GgmlType, GgufFile};

fn models_dir() -> std::path::PathBuf {
    std::env::var("STRATA_MODELS")
        .map(Into::into)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/strata/models")
        })
}

#[test]
fn reads_smollm2() {
    let f = GgufFile::open(models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    assert_eq!(f.architecture(), Some("llama"));
    assert_eq!(f.tensors.len(), 272);
    assert_eq!(f.get_u64("llama.block_count"), Some(30));
    let emb = f.tensor("token_embd.weight").unwrap();
    assert_eq!(emb.dims, vec![576, 49152]);
    assert_eq!(emb.dtype, GgmlType::Q8_0);
    assert_eq!(f.tensor_data(emb).len() as u64, 576 / 32 * 34 * 49152);
    let toks = f.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap();
    assert_eq!(toks.len(), 49152);
}

#[test]
fn reads_gemma3() {
    let f = GgufFile::open(models_dir().join("gemma-3-270m-q4_k_m.gguf")).unwrap();
    assert_eq!(f.architecture(), Some("gemma3"));
    assert_eq!(f.tensors.len(), 236);
    assert_eq!(
        f.tensor("blk.0.ffn_down.weight").unwrap().dtype,
        GgmlType::Q6K
    );
}
