//! Single-process use of a whole-model stage: generation and perplexity.
//! The distributed path runs the same `Stage::forward`, split over workers.

use strata_kernels::Backend;
use strata_model::attention_order::{prompt_orders, split_ubatches, RowOrder, ServerBatching};

use crate::sampler::{log_sum_exp, Sampled, Sampler};
use crate::stage::{BatchSeq, LogitRows, Stage, StageError, StageInput, StageOutput};

/// Prompt tokens per forward call, like llama.cpp's default ubatch.
pub const PREFILL_CHUNK_TOKENS: usize = 512;

fn logits_of<A>(out: StageOutput<A>) -> Result<Vec<Vec<f32>>, StageError> {
    match out {
        StageOutput::Logits(l) => Ok(l),
        StageOutput::Hidden(_) => Err(StageError::Batch(
            "this stage does not end the model".into(),
        )),
    }
}

/// Feeds `tokens` to sequence `seq` from `start_pos`, in chunks, every row
/// in ggml's one-chunk order (as llama.cpp computes batches of under 64
/// rows); returns the logits after the last token, or with `Some(first)`
/// those of every token from index `first` of `tokens` on.
pub fn prefill<B: Backend>(
    stage: &mut Stage<B>,
    seq: u64,
    start_pos: usize,
    tokens: &[u32],
    logits_from: Option<usize>,
) -> Result<Vec<Vec<f32>>, StageError> {
    prefill_rows(stage, seq, start_pos, tokens, logits_from, &[])
}

/// [`prefill`] with `tiled[i]` saying whether token `i` takes ggml's tiled
/// order (empty: none does).
pub fn prefill_rows<B: Backend>(
    stage: &mut Stage<B>,
    seq: u64,
    start_pos: usize,
    tokens: &[u32],
    logits_from: Option<usize>,
    tiled: &[bool],
) -> Result<Vec<Vec<f32>>, StageError> {
    if !tiled.is_empty() && tiled.len() != tokens.len() {
        return Err(StageError::Batch(format!(
            "{} row orders for {} tokens",
            tiled.len(),
            tokens.len()
        )));
    }
    let mut out = Vec::new();
    for (i, chunk) in tokens.chunks(PREFILL_CHUNK_TOKENS).enumerate() {
        let offset = i * PREFILL_CHUNK_TOKENS;
        let logits = match logits_from {
            None => LogitRows::Last,
            Some(first) => LogitRows::From(first.saturating_sub(offset)),
        };
        let batch = [BatchSeq {
            seq,
            start_pos: start_pos + offset,
            n_tokens: chunk.len(),
            logits,
            decode: false,
            tiled: tiled
                .get(offset..offset + chunk.len())
                .map_or_else(Vec::new, <[bool]>::to_vec),
        }];
        let rows = logits_of(stage.forward(&batch, StageInput::Tokens(chunk.to_vec()))?)?;
        if logits_from.is_some() {
            out.extend(rows);
        } else {
            out = rows;
        }
    }
    Ok(out)
}

/// Which rows of a cold `len`-token prompt take ggml's tiled order, as
/// llama-server's default batching computes them on this stage's cache.
pub fn server_tiled_rows<B: Backend>(stage: &Stage<B>, len: usize) -> Vec<bool> {
    let ubatches = ServerBatching::new(stage.spec().server_checkpoints()).ubatches(len);
    tiled_of(&prompt_orders(stage.kv_type(), &ubatches))
}

/// Which rows of `len` tokens decoded as one batch (`llama-bench`,
/// `llama-perplexity`) take ggml's tiled order: those of its 512-row
/// ubatches of 64+ rows, on this stage's cache.
pub fn one_batch_tiled_rows<B: Backend>(stage: &Stage<B>, len: usize) -> Vec<bool> {
    let ubatches = split_ubatches(&[0..len], ServerBatching::DEFAULT_N_UBATCH);
    tiled_of(&prompt_orders(stage.kv_type(), &ubatches))
}

/// `orders` as the tiled flags a batch carries.
pub fn tiled_of(orders: &[RowOrder]) -> Vec<bool> {
    orders.iter().map(|&o| o == RowOrder::Tiled).collect()
}

/// Feeds generated `token` to sequence `seq` at `pos` as a decode step;
/// returns the logits after it.
pub fn decode_step<B: Backend>(
    stage: &mut Stage<B>,
    seq: u64,
    pos: usize,
    token: u32,
) -> Result<Vec<f32>, StageError> {
    let batch = [BatchSeq {
        seq,
        start_pos: pos,
        n_tokens: 1,
        logits: LogitRows::Last,
        decode: true,
        tiled: Vec::new(),
    }];
    let step = stage.forward(&batch, StageInput::Tokens(vec![token]))?;
    Ok(logits_of(step)?.pop().unwrap_or_default())
}

/// Generates up to `max_tokens` after `prompt`, calling `on_token` for each;
/// stops early when `on_token` returns false. Frees the sequence at the end.
pub fn generate<B: Backend>(
    stage: &mut Stage<B>,
    prompt: &[u32],
    max_tokens: usize,
    sampler: &mut Sampler,
    mut on_token: impl FnMut(&Sampled) -> bool,
) -> Result<Vec<Sampled>, StageError> {
    const SEQ: u64 = 0;
    if prompt.is_empty() {
        return Err(StageError::Batch("empty prompt".into()));
    }
    let result = (|| {
        let mut history = prompt.to_vec();
        let tiled = server_tiled_rows(stage, prompt.len());
        let mut logits = prefill_rows(stage, SEQ, 0, prompt, None, &tiled)?
            .pop()
            .unwrap_or_default();
        let mut out = Vec::new();
        for _ in 0..max_tokens {
            let s = sampler.sample(&logits, &history);
            history.push(s.token);
            let go_on = on_token(&s);
            out.push(s);
            if !go_on || out.len() == max_tokens {
                break;
            }
            logits = decode_step(stage, SEQ, history.len() - 1, *history.last().unwrap_or(&0))?;
        }
        Ok(out)
    })();
    stage.release(SEQ);
    result
}

/// Perplexity as `llama-perplexity -c CTX` measures it: the token stream is
/// cut into chunks of `ctx`, the first token of each replaced by `bos` when
/// given, and the second half of each chunk scored. Returns the running
/// perplexity after each chunk.
pub fn perplexity<B: Backend>(
    stage: &mut Stage<B>,
    tokens: &[u32],
    ctx: usize,
    bos: Option<u32>,
) -> Result<Vec<f64>, StageError> {
    const SEQ: u64 = 0;
    let first = ctx / 2;
    let mut nll = 0.0f64;
    let mut count = 0usize;
    let mut running = Vec::new();
    for chunk in tokens.chunks_exact(ctx) {
        let mut input = chunk.to_vec();
        if let Some(b) = bos {
            input[0] = b;
        }
        // `llama-perplexity -b CTX` decodes a chunk as one batch.
        let tiled = one_batch_tiled_rows(stage, ctx);
        let logits = prefill_rows(stage, SEQ, 0, &input, Some(first), &tiled);
        stage.release(SEQ);
        let logits = logits?;
        for j in first..ctx - 1 {
            let row = &logits[j - first];
            nll += (log_sum_exp(row) - row[chunk[j + 1] as usize]) as f64;
            count += 1;
        }
        running.push((nll / count as f64).exp());
    }
    Ok(running)
}
