//! Wire frames ↔ stage types: batch headers, activations as bytes, sampling
//! parameters and sampled tokens. Plain functions, no I/O.

use half::f16;
use strata_proto::{row_bits, v1};

use crate::kv_blocks::BlockHash;
use crate::sampler::{Sampled, SamplingParams};
use crate::stage::{BatchSeq, LogitRows};

/// Most tokens one frame may carry (bounds what a peer makes us allocate).
pub const MAX_FRAME_TOKENS: usize = 1 << 16;

/// What the plan lets one frame carry.
#[derive(Debug, Clone, Copy)]
pub struct FrameLimits {
    /// Tokens in one frame.
    pub batch_tokens: usize,
    /// Positions of one sequence (its context).
    pub seq_tokens: usize,
}

/// Turns a frame header into the stage's batch, checking it against the
/// plan's `limits` and the token count against `token_ids` when the frame
/// carries them. Nothing is changed anywhere before this passes.
pub fn batch_of(
    header: &v1::BatchHeader,
    n_token_ids: usize,
    is_last: bool,
    limits: FrameLimits,
) -> Result<Vec<BatchSeq>, String> {
    if header.entries.is_empty() {
        return Err("a frame with no entries".into());
    }
    if header.entries.len() > limits.batch_tokens {
        return Err(format!(
            "a frame of {} entries; the plan allows {} tokens",
            header.entries.len(),
            limits.batch_tokens
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(header.entries.len());
    let mut n_tokens = 0usize;
    let mut batch = Vec::with_capacity(header.entries.len());
    for e in &header.entries {
        if e.n_tokens == 0 {
            return Err(format!("sequence {} has a run of 0 tokens", e.seq_id));
        }
        if !seen.insert(e.seq_id) {
            return Err(format!("sequence {} appears twice in one frame", e.seq_id));
        }
        n_tokens += e.n_tokens as usize;
        if n_tokens > limits.batch_tokens {
            return Err(format!(
                "a frame of more than {} tokens (the plan's batch)",
                limits.batch_tokens
            ));
        }
        let end = e.start_pos as usize + e.n_tokens as usize;
        if end > limits.seq_tokens {
            return Err(format!(
                "sequence {} would reach position {end}; a sequence holds at most {} tokens",
                e.seq_id, limits.seq_tokens
            ));
        }
        // Only the last stage makes logits; a run that does not sample asks
        // for none of its rows.
        let logits = if e.sample {
            LogitRows::Last
        } else {
            LogitRows::From(e.n_tokens as usize)
        };
        let n = e.n_tokens as usize;
        let tiled = row_bits::unpack(&e.tiled_rows, n).ok_or_else(|| {
            format!(
                "sequence {}: {} bytes of tiled rows for {n} tokens",
                e.seq_id,
                e.tiled_rows.len()
            )
        })?;
        batch.push(BatchSeq {
            seq: e.seq_id,
            start_pos: e.start_pos as usize,
            n_tokens: n,
            logits,
            decode: e.decode,
            tiled,
        });
    }
    if n_token_ids != 0 && n_token_ids != n_tokens {
        return Err(format!("{n_token_ids} token ids for {n_tokens} positions"));
    }
    // The head needs at least one row; a last-stage frame with no sampling
    // run computes the first run's last row and drops it.
    if is_last && !header.entries.iter().any(|e| e.sample) {
        batch[0].logits = LogitRows::Last;
    }
    Ok(batch)
}

/// A run's prefix-cache blocks (`BatchEntry::prefix_blocks`): 16-byte
/// hashes, as many as its start position has whole blocks.
pub fn prefix_of(e: &v1::BatchEntry) -> Result<Vec<BlockHash>, String> {
    let n = e.prefix_blocks.len();
    if n * strata_kernels::KV_BLOCK_TOKENS != e.start_pos as usize {
        return Err(format!(
            "sequence {} starts at position {} on {n} cached blocks",
            e.seq_id, e.start_pos
        ));
    }
    e.prefix_blocks
        .iter()
        .map(|h| {
            BlockHash::try_from(h.as_slice()).map_err(|_| {
                format!(
                    "sequence {}: a prefix block hash of {} bytes, not 16",
                    e.seq_id,
                    h.len()
                )
            })
        })
        .collect()
}

/// Activations to little-endian bytes in `dtype`.
pub fn encode_activations(values: &[f32], dtype: v1::ActDtype) -> Vec<u8> {
    match dtype {
        v1::ActDtype::F16 => {
            let mut out = Vec::with_capacity(values.len() * 2);
            for &v in values {
                out.extend_from_slice(&f16::from_f32(v).to_le_bytes());
            }
            out
        }
        v1::ActDtype::F32 => {
            let mut out = Vec::with_capacity(values.len() * 4);
            for &v in values {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out
        }
    }
}

/// Little-endian bytes in `dtype` to `rows x cols` activations.
pub fn decode_activations(
    bytes: &[u8],
    dtype: v1::ActDtype,
    rows: usize,
    cols: usize,
) -> Result<Vec<f32>, String> {
    let width = match dtype {
        v1::ActDtype::F16 => 2,
        v1::ActDtype::F32 => 4,
    };
    let expected = rows.checked_mul(cols).and_then(|n| n.checked_mul(width));
    if expected != Some(bytes.len()) {
        return Err(format!(
            "activations of {} bytes, expected {rows} tokens x {cols} x {width} bytes ({:?})",
            bytes.len(),
            dtype
        ));
    }
    Ok(match dtype {
        v1::ActDtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        v1::ActDtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    })
}

pub fn sampling_from_wire(p: &v1::SamplingParams) -> SamplingParams {
    SamplingParams {
        temperature: p.temperature,
        top_k: p.top_k as usize,
        top_p: p.top_p,
        min_p: p.min_p,
        seed: p.seed,
        repetition_penalty: p.repetition_penalty,
        presence_penalty: p.presence_penalty,
        frequency_penalty: p.frequency_penalty,
        penalty_last_n: p.penalty_last_n as usize,
        n_logprobs: p.n_logprobs as usize,
        logit_bias: p.logit_bias.iter().map(|b| (b.token_id, b.bias)).collect(),
    }
}

pub fn sampling_to_wire(p: &SamplingParams) -> v1::SamplingParams {
    v1::SamplingParams {
        temperature: p.temperature,
        top_k: p.top_k as u32,
        top_p: p.top_p,
        min_p: p.min_p,
        seed: p.seed,
        repetition_penalty: p.repetition_penalty,
        presence_penalty: p.presence_penalty,
        frequency_penalty: p.frequency_penalty,
        penalty_last_n: p.penalty_last_n as u32,
        n_logprobs: p.n_logprobs as u32,
        logit_bias: p
            .logit_bias
            .iter()
            .map(|&(token_id, bias)| v1::LogitBias { token_id, bias })
            .collect(),
        grammar: String::new(),
        grammar_start: 0,
    }
}

pub fn sampled_to_wire(seq: u64, s: &Sampled) -> v1::SampledToken {
    v1::SampledToken {
        seq_id: seq,
        token_id: s.token,
        logprob: s.logprob,
        top_logprobs: s
            .top
            .iter()
            .map(|t| v1::TokenLogprob {
                token_id: t.token,
                logprob: t.logprob,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: FrameLimits = FrameLimits {
        batch_tokens: 8,
        seq_tokens: 64,
    };

    #[test]
    fn frames_past_the_plan_are_refused() {
        let h = |entries| v1::BatchHeader {
            batch_id: 1,
            entries,
            ..Default::default()
        };
        let err = |entries| batch_of(&h(entries), 0, false, LIMITS).unwrap_err();
        assert!(err(vec![entry(1, 0, 9, false)]).contains("the plan's batch"));
        assert!(err(vec![entry(1, 60, 5, false)]).contains("at most 64"));
        assert!(err(vec![entry(1, 0, 1, false), entry(1, 1, 1, false)]).contains("twice"));
        let many: Vec<_> = (0..9).map(|i| entry(i, 0, 1, false)).collect();
        assert!(err(many).contains("9 entries"));
        assert!(batch_of(&h(vec![entry(1, 56, 8, false)]), 0, false, LIMITS).is_ok());
    }

    fn entry(seq: u64, start: u32, n: u32, sample: bool) -> v1::BatchEntry {
        v1::BatchEntry {
            seq_id: seq,
            start_pos: start,
            n_tokens: n,
            sample,
            sampling: None,
            ..Default::default()
        }
    }

    #[test]
    fn activations_round_trip() {
        let v: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 3.0).collect();
        for dtype in [v1::ActDtype::F16, v1::ActDtype::F32] {
            let bytes = encode_activations(&v, dtype);
            assert_eq!(decode_activations(&bytes, dtype, 3, 4).unwrap(), v);
            assert!(decode_activations(&bytes, dtype, 4, 4).is_err());
        }
    }

    #[test]
    fn tiled_rows_are_read_per_run_and_a_wrong_length_refused() {
        let tiled = |bits: Vec<u8>| v1::BatchHeader {
            batch_id: 1,
            entries: vec![v1::BatchEntry {
                tiled_rows: bits,
                ..entry(1, 0, 10, true)
            }],
            ..Default::default()
        };
        let limits = FrameLimits {
            batch_tokens: 16,
            ..LIMITS
        };
        let b = batch_of(&tiled(vec![0b101, 0b10]), 10, true, limits).unwrap();
        let rows: Vec<usize> = (0..10).filter(|&i| b[0].tiled[i]).collect();
        assert_eq!(rows, [0, 2, 9]);
        assert!(batch_of(&tiled(vec![]), 10, true, limits).unwrap()[0]
            .tiled
            .is_empty());
        let err = batch_of(&tiled(vec![0xff]), 10, true, limits).unwrap_err();
        assert!(err.contains("1 bytes of tiled rows for 10 tokens"), "{err}");
    }

    #[test]
    fn batches_check_counts_and_logit_rows() {
        let h = v1::BatchHeader {
            batch_id: 1,
            entries: vec![entry(1, 0, 3, false), entry(2, 5, 1, true)],
            ..Default::default()
        };
        let b = batch_of(&h, 4, true, LIMITS).unwrap();
        assert_eq!(b[0].logits, LogitRows::From(3));
        assert_eq!(b[1].logits, LogitRows::Last);
        assert!(batch_of(&h, 5, true, LIMITS).is_err());
        let h = v1::BatchHeader {
            batch_id: 1,
            entries: vec![entry(1, 0, 3, false)],
            ..Default::default()
        };
        assert_eq!(
            batch_of(&h, 3, true, LIMITS).unwrap()[0].logits,
            LogitRows::Last
        );
        let h = v1::BatchHeader {
            batch_id: 1,
            entries: vec![entry(1, 0, 3, false), entry(1, 3, 1, true)],
            ..Default::default()
        };
        assert!(batch_of(&h, 4, true, LIMITS).is_err());
    }

    #[test]
    fn sampling_round_trips() {
        let p = SamplingParams {
            temperature: 0.7,
            top_k: 20,
            n_logprobs: 3,
            logit_bias: vec![(7, -100.0)],
            ..Default::default()
        };
        assert_eq!(sampling_from_wire(&sampling_to_wire(&p)), p);
    }
}
