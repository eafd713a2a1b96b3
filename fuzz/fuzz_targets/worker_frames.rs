//! Fuzzes what a worker does with a frame a peer sends before any compute:
//! protobuf decoding of `v1::BatchFrame` (prost), the header checked into a
//! batch against the plan (`frames::batch_of`), activations decoded
//! (`frames::decode_activations`), and each run's sampling parameters
//! (`frames::sampling_from_wire`) driving a `Sampler` on a small logits row,
//! in the order the stage thread runs them (`service/stage_thread.rs`).
//!
//! Input: 4 config bytes (stage position, d_model, plan limits, vocab), then
//! the encoded frame. Any input must end in a frame or an error: no panic, no
//! allocation past what the plan's limits allow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use strata_proto::v1;
use strata_worker::service::frames::{self, FrameLimits, MAX_FRAME_TOKENS};
use strata_worker::Sampler;

fuzz_target!(|data: &[u8]| {
    let Some((config, wire)) = data.split_first_chunk::<4>() else {
        return;
    };
    let Ok(frame) = v1::BatchFrame::decode(wire) else {
        return;
    };
    let [flags, d_model, limit, vocab] = *config;
    let is_first = flags & 1 != 0;
    let is_last = flags & 2 != 0;
    let d_model = d_model as usize % 64 + 1;
    // Small plans mostly, and now and then the ceiling a worker accepts.
    let limits = if flags & 4 != 0 {
        FrameLimits { batch_tokens: MAX_FRAME_TOKENS, seq_tokens: 1 << 20 }
    } else {
        FrameLimits { batch_tokens: (limit & 15) as usize + 1, seq_tokens: (limit >> 4) as usize * 16 + 1 }
    };
    let vocab = vocab as usize % 32 + 1;
    let _ = stage(&frame, is_first, is_last, d_model, limits, vocab);
});

fn stage(
    frame: &v1::BatchFrame,
    is_first: bool,
    is_last: bool,
    d_model: usize,
    limits: FrameLimits,
    vocab: usize,
) -> Result<(), String> {
    let header = frame.header.as_ref().ok_or("a frame with no header")?;
    let batch = frames::batch_of(header, frame.token_ids.len(), is_last, limits)?;
    // What batch_of promises: within the plan, one run per entry, ids match.
    assert_eq!(batch.len(), header.entries.len());
    let n_tokens: usize = batch.iter().map(|s| s.n_tokens).sum();
    assert!(n_tokens <= limits.batch_tokens);
    assert!(batch.iter().all(|s| s.n_tokens > 0 && s.start_pos + s.n_tokens <= limits.seq_tokens));
    assert!(frame.token_ids.is_empty() || frame.token_ids.len() == n_tokens);
    if is_first {
        if frame.token_ids.len() != n_tokens {
            return Err("token ids".into());
        }
    } else {
        let dtype = v1::ActDtype::try_from(frame.act_dtype).map_err(|e| e.to_string())?;
        let values = frames::decode_activations(&frame.activations, dtype, n_tokens, d_model)?;
        assert_eq!(values.len(), n_tokens * d_model);
        if dtype == v1::ActDtype::F32 {
            assert_eq!(frames::encode_activations(&values, dtype), frame.activations);
        }
    }
    if !is_last {
        return Ok(());
    }
    // The last stage: history per sequence, then a draw per sampling run.
    let logits: Vec<f32> = (0..vocab)
        .map(|i| frame.activations.get(i).map_or(i as f32, |&b| b as f32 / 7.0 - 10.0))
        .collect();
    let mut offset = 0usize;
    for e in &header.entries {
        let n = e.n_tokens as usize;
        let mut history = Vec::new();
        if !frame.token_ids.is_empty() {
            history.extend_from_slice(&frame.token_ids[offset..offset + n]);
        }
        offset += n;
        if let Some(p) = &e.sampling {
            let params = frames::sampling_from_wire(p);
            let s = Sampler::new(params.clone()).sample(&logits, &history);
            assert!((s.token as usize) < vocab);
            assert!(s.top.len() <= params.n_logprobs.min(vocab));
            let _ = frames::sampled_to_wire(e.seq_id, &s);
        }
    }
    Ok(())
}
