//! Writes a seed corpus for the `worker_frames` target:
//! `cargo run --bin frame_seeds -- corpus/worker_frames`.
//! Each seed is the target's 4 config bytes and an encoded `v1::BatchFrame`:
//! first-stage prompts, middle-stage f16/f32 activations, last-stage
//! sampling runs, and frames the checks refuse.
use std::path::PathBuf;

use prost::Message;
use strata_proto::v1;

fn entry(seq_id: u64, start_pos: u32, n_tokens: u32, sample: bool) -> v1::BatchEntry {
    v1::BatchEntry {
        seq_id,
        start_pos,
        n_tokens,
        sample,
        sampling: sample.then(|| v1::SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            seed: seq_id,
            repetition_penalty: 1.1,
            presence_penalty: 0.5,
            frequency_penalty: 0.5,
            penalty_last_n: 64,
            n_logprobs: 3,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn frame(entries: Vec<v1::BatchEntry>, token_ids: Vec<u32>, act: Vec<u8>, dtype: v1::ActDtype) -> v1::BatchFrame {
    v1::BatchFrame {
        header: Some(v1::BatchHeader { batch_id: 7, entries, ..Default::default() }),
        token_ids,
        activations: act,
        act_dtype: dtype as i32,
        ..Default::default()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus/worker_frames".into()));
    std::fs::create_dir_all(&dir)?;
    // Config bytes: [flags (1 first, 2 last, 4 ceiling limits), d_model-1, limits, vocab-1].
    let (first, last, mid) = (1u8, 2u8, 0u8);
    let d = 4u8; // d_model 4
    let f32s = |n: usize| (0..n).flat_map(|i| (i as f32 * 0.25).to_le_bytes()).collect::<Vec<u8>>();
    let f16s = |n: usize| (0..n).flat_map(|i| half_bytes(i as f32 * 0.25)).collect::<Vec<u8>>();
    let seeds: Vec<(&str, [u8; 4], v1::BatchFrame)> = vec![
        ("prompt", [first, d - 1, 0xff, 15], frame(vec![entry(1, 0, 3, false)], vec![1, 2, 3], vec![], v1::ActDtype::F16)),
        ("prompt-last", [first | last, d - 1, 0xff, 15], frame(vec![entry(1, 0, 3, true), entry(2, 5, 1, true)], vec![1, 2, 3, 4], vec![], v1::ActDtype::F16)),
        ("mid-f16", [mid, d - 1, 0xff, 15], frame(vec![entry(1, 0, 2, false), entry(2, 4, 1, true)], vec![], f16s(12), v1::ActDtype::F16)),
        ("mid-f32", [mid, d - 1, 0xff, 15], frame(vec![entry(3, 1, 2, true)], vec![5, 6], f32s(8), v1::ActDtype::F32)),
        ("last-f32", [last, d - 1, 0xff, 31], frame(vec![entry(3, 1, 2, true), entry(4, 0, 1, false)], vec![5, 6, 7], f32s(12), v1::ActDtype::F32)),
        ("ceiling", [last | 4, d - 1, 0, 31], frame(vec![entry(9, 100, 4, true)], vec![1, 1, 2, 2], f16s(16), v1::ActDtype::F16)),
        ("duplicate-seq", [mid, d - 1, 0xff, 15], frame(vec![entry(1, 0, 1, false), entry(1, 1, 1, false)], vec![], f16s(8), v1::ActDtype::F16)),
        ("past-context", [mid, d - 1, 0x0f, 15], frame(vec![entry(1, 10, 4, false)], vec![], f16s(16), v1::ActDtype::F16)),
        ("no-header", [mid, d - 1, 0xff, 15], v1::BatchFrame { header: None, token_ids: vec![1], activations: vec![0; 8], act_dtype: 9, release_first: vec![2], ..Default::default() }),
        // Prefix-cache fields: a hash of the wrong length, blocks that are
        // not kept, and kept-block lists to retain and evict.
        ("prefix-bad-hash", [first, d - 1, 0xff, 15], frame(vec![v1::BatchEntry { prefix_blocks: vec![vec![1; 15]], ..entry(2, 32, 1, false) }], vec![4], vec![], v1::ActDtype::F32)),
        ("prefix-not-kept", [first, d - 1, 0xff, 15], frame(vec![v1::BatchEntry { prefix_blocks: vec![vec![1; 16]], history_before: vec![3; 70], ..entry(2, 32, 1, true) }], vec![4], vec![], v1::ActDtype::F32)),
        ("retain-evict", [first, d - 1, 0xff, 15], v1::BatchFrame { retain_first: vec![v1::RetainBlocks { seq_id: 1, block_hashes: vec![vec![2; 16], vec![3; 9]] }], evict_first: vec![vec![2; 16], vec![]], clear_cached_first: true, ..frame(vec![entry(1, 0, 1, false)], vec![4], vec![], v1::ActDtype::F32) }),
    ];
    for (name, config, f) in &seeds {
        let mut bytes = config.to_vec();
        bytes.extend_from_slice(&f.encode_to_vec());
        std::fs::write(dir.join(name), bytes)?;
    }
    println!("wrote {} seeds to {}", seeds.len(), dir.display());
    Ok(())
}

/// f32 to little-endian f16 bytes (round toward zero is enough for seeds).
fn half_bytes(v: f32) -> [u8; 2] {
    let b = v.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
    let bits = if v == 0.0 || exp <= 0 { sign } else { sign | ((exp as u16) << 10) | ((b >> 13) & 0x3ff) as u16 };
    bits.to_le_bytes()
}
