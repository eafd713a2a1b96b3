//! Fuzzes everything a model load derives from a GGUF before any weight is
//! read: the parser, then `ModelSpec::from_gguf` (whose bounds checks must
//! refuse absurd sizes), the memory profile for a small context, and the
//! tokenizer built from `tokenizer.ggml.*` metadata (with a short encode and
//! decode). Any input must end in a value or an error: no panic, no abort,
//! no allocation sized by a count the file states.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_model::arch::ModelSpec;
use strata_model::profile::{KvType, MemoryProfile};
use strata_model::tokenizer::Tokenizer;
use strata_model::GgufFile;

/// Context the profile is sized for: small, as the planner's smallest plan.
const CTX_TOKENS: usize = 256;

fuzz_target!(|data: &[u8]| {
    let Ok(f) = GgufFile::from_bytes("fuzz.gguf", data) else {
        return;
    };
    if let Ok(hp) = ModelSpec::from_gguf(&f) {
        let _ = format!("{hp:?}");
        for il in 0..hp.n_layers {
            if let Some(a) = hp.attention(il) {
                let _ = (a.q_dim(), a.k_dim(), a.v_dim(), a.out_dim(), a.window);
            }
            if let Some(d) = hp.delta_net(il) {
                let _ = (d.conv_state_len(), d.ssm_state_len());
            }
        }
        let profile = MemoryProfile::from_gguf(&f, &hp);
        assert_eq!(profile.layers.len(), hp.n_layers);
        let mut kv = 0u64;
        for l in &profile.layers {
            for t in [KvType::F16, KvType::Q8_0] {
                kv = kv.wrapping_add(l.kv_read_bytes(t, CTX_TOKENS));
                kv = kv.wrapping_add(l.kv_bytes_per_token(t));
            }
        }
        std::hint::black_box((kv, profile.total_weight_bytes()));
    }
    if let Ok(tok) = Tokenizer::from_gguf(&f) {
        let n = tok.vocab_size();
        let _ = (tok.bos(), tok.eos(), tok.eot(), tok.unk(), tok.add_bos(), tok.add_eos());
        for id in (0..n as u32).take(64).chain([n as u32, u32::MAX]) {
            let _ = (tok.token_text(id), tok.is_control(id), tok.attr(id), tok.is_end_of_generation(id));
            if (id as usize) < n {
                let _ = (tok.token_bytes(id), tok.piece(id));
            }
        }
        let ids = tok.encode("Hello, world! <s> 123 \u{e9}\u{4e16}", true, true);
        let _ = tok.decode(&ids);
        let _ = tok.decode_with_special(&ids);
        let _ = tok.decode(&[0, 1, 2, n as u32, u32::MAX]);
    }
});
