//! Perplexity over `gpl-3.txt` at ctx 128, as `llama-perplexity -c 128 -b 128`
//! measures it, within 1% of llama.cpp's figure.

use strata_kernels::CpuBackend;
use strata_model::arch::ModelSpec;
use strata_model::tokenizer::Tokenizer;
use strata_model::GgufFile;
use strata_tests::{model_path, reference, reference_dir, GEMMA3, SMOLLM2};
use strata_worker::generate::perplexity;
use strata_worker::{LayerRange, Stage};

fn check(model_file: &str, reference_file: &str) {
    let expected = &reference(reference_file)["perplexity"];
    let ctx = expected["ctx"].as_u64().unwrap() as usize;
    let text =
        std::fs::read_to_string(reference_dir().join(expected["text"].as_str().unwrap())).unwrap();
    let file = GgufFile::open(model_path(model_file)).unwrap();
    let hp = ModelSpec::from_gguf(&file).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let tokens = tok.encode(&text, true, false);
    let bos = if tok.add_bos() { tok.bos() } else { None };
    let mut stage = Stage::load(
        CpuBackend::new(),
        &file,
        LayerRange {
            first: 0,
            end: hp.n_layers,
        },
        ctx,
    )
    .unwrap();
    let running = perplexity(&mut stage, &tokens, ctx, bos).unwrap();
    let want: Vec<f64> = expected["running_ppl_per_chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(running.len(), want.len(), "{model_file}: chunk count");
    let (ours, theirs) = (*running.last().unwrap(), expected["ppl"].as_f64().unwrap());
    eprintln!(
        "{model_file}: perplexity {ours:.4}, llama.cpp {theirs:.4} ({:+.2}%)",
        100.0 * (ours / theirs - 1.0)
    );
    assert!(
        (ours / theirs - 1.0).abs() < 0.01,
        "{model_file}: perplexity {ours} vs llama.cpp {theirs}"
    );
}

#[test]
fn smollm2_perplexity_matches_llama_cpp() {
    check(SMOLLM2, "smollm2-135m.json");
}

#[test]
fn gemma3_perplexity_matches_llama_cpp() {
    check(GEMMA3, "gemma3-270m.json");
}
