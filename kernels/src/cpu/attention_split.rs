//! Flash attention's split-KV decode path over f16 K/V, in ggml-cpu's order
//! (`ggml_compute_forward_flash_attn_ext_f16`, ops.cpp): for a decode row
//! over 512+ KV cells, each of ggml's `n_threads` chunks of the cells runs
//! the one-chunk online softmax on its own (partial max, sum and f32
//! accumulator), then `ggml_flash_attn_ext_reduce_partials` merges the
//! chunks in order. ggml's chunk count is its thread count; strata fixes it
//! (`SPLIT_KV_CHUNKS`) and runs the chunks in parallel, so a long decode
//! step uses every thread.

use half::{f16, slice::HalfFloatSliceExt};
use rayon::prelude::*;

use super::attention::{add_sink, F16Pass};
use super::{fused, CpuAct};
use crate::backend::AttentionBatch;

/// llama.cpp pads the KV cells a graph sees to a multiple of this
/// (`llama_kv_cache::get_n_kv`), so its graph stays the same across steps.
const KV_PAD_CELLS: usize = 256;

/// Chunks of a split decode step. ggml takes one per thread, so its bits
/// depend on `-t`; strata fixes the count so that every worker of a pool,
/// whatever its threads, gives one process's bits (llama.cpp's at `-t 2`).
/// The (head, chunk) pairs still run in parallel over all threads.
pub(super) const SPLIT_KV_CHUNKS: usize = 2;

/// ggml takes the split-KV path from this many KV cells.
const SPLIT_MIN_KV_CELLS: usize = 512;

/// The KV cells llama.cpp's graph spans when a sequence's highest position
/// is `pos` (one sequence from cell 0; the cache holding at least these).
pub(super) fn ggml_kv_cells(pos: usize) -> usize {
    (pos + 1).next_multiple_of(KV_PAD_CELLS)
}

/// Positions per chunk when ggml-cpu, run on `n_threads` threads, takes
/// its split-KV path for token `t` of this batch; `None` when it takes the
/// one-chunk path. ggml splits a lone query token over 512+ cells: strata
/// splits decode steps (`AttentionBatch::decode`), so that a prompt row
/// takes one order whatever its batch, and a block of prompt KV has the
/// same bits cached or recomputed. Sliding-window layers stay on the
/// one-chunk path (llama.cpp keeps them in a ring-buffer cache of its own,
/// whose cell order strata does not follow).
pub(super) fn split_kv_chunk_tokens(
    t: usize,
    batch: &AttentionBatch<'_>,
    n_threads: usize,
) -> Option<usize> {
    if !batch.decode.get(t).copied().unwrap_or(false) || batch.window.is_some() {
        return None;
    }
    let cells = ggml_kv_cells(batch.positions[t] as usize);
    (cells >= SPLIT_MIN_KV_CELLS).then(|| cells.div_ceil(n_threads.max(1)))
}

/// One chunk's softmax state for one head, as ggml writes it to its
/// partials buffer: running max, sum, and the f32 accumulator (not yet
/// divided by the sum).
struct Partial {
    max: f32,
    sum: f32,
    acc: Vec<f32>,
}

/// Attention of the batch's token `t` over positions `0..=pos` in chunks
/// of `chunk_tokens`, into `out` (`n_heads * head_dim_v` values).
pub(super) fn attend_split(
    pass: &F16Pass<'_>,
    q: &CpuAct,
    t: usize,
    chunk_tokens: usize,
    out: &mut [f32],
) {
    let batch = pass.batch;
    let (hd, hdv) = pass.head_dims();
    let span = batch.positions[t] as usize + 1;
    let n_chunks = span.div_ceil(chunk_tokens);
    // Work items in (head, chunk) order; chunks past the last position
    // would hold nothing (ggml writes max -inf, sum 0 and skips them).
    let mut partials: Vec<Partial> = (0..batch.n_heads * n_chunks)
        .map(|_| Partial {
            max: f32::NEG_INFINITY,
            sum: 0.0,
            acc: vec![0.0; hdv],
        })
        .collect();
    let scratch = || (vec![0f32; hd], vec![f16::ZERO; hdv]);
    partials
        .par_iter_mut()
        .enumerate()
        .for_each_init(scratch, |(qh, acc16), (i, p)| {
            fused(|| {
                let (h, c) = (i / n_chunks, i % n_chunks);
                let start = c * chunk_tokens;
                let end = (start + chunk_tokens).min(span);
                pass.round_query(q, t, h, qh);
                let (max, sum) = pass.run(qh, acc16, t, pass.kv_head(h), start..end);
                acc16.convert_to_f32_slice(&mut p.acc);
                (p.max, p.sum) = (max, sum);
                // The sink joins the first chunk only, before its partial is written.
                if let (Some(sinks), 0) = (batch.sinks, c) {
                    add_sink(&mut p.acc, &mut p.max, &mut p.sum, sinks[h]);
                }
            })
        });
    for (o, chunks) in out.chunks_mut(hdv).zip(partials.chunks(n_chunks)) {
        fused(|| reduce_partials(chunks, o));
    }
}

/// `ggml_flash_attn_ext_reduce_partials` for one head: chunks merged in
/// order, each value `fma(acc, scale_old, chunk * scale_new)` as GCC
/// contracts `acc*scale_old + chunk*scale_new` (its AVX-512 build's
/// disassembly), the sum likewise, then `o = acc * (1/sum)`.
fn reduce_partials(chunks: &[Partial], o: &mut [f32]) {
    let (mut max, mut sum) = (f32::NEG_INFINITY, 0.0f32);
    o.fill(0.0);
    for p in chunks.iter().filter(|p| p.sum != 0.0) {
        let new_max = max.max(p.max);
        let scale_old = (max - new_max).exp();
        let scale_new = (p.max - new_max).exp();
        for (o, &c) in o.iter_mut().zip(&p.acc) {
            *o = o.mul_add(scale_old, c * scale_new);
        }
        sum = sum.mul_add(scale_old, p.sum * scale_new);
        max = new_max;
    }
    if sum != 0.0 {
        let inv = 1.0 / sum;
        o.iter_mut().for_each(|o| *o *= inv);
    }
}

#[cfg(test)]
pub(super) mod tests;
