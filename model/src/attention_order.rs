//! Which of ggml-cpu's flash-attention orders llama.cpp gives each row of a
//! sequence, so that strata can give it the same one. The order changes the
//! last bits, and with f16 K/V more than that: the tiled path sums V in
//! f32, the one-chunk path in f16 (docs/numerics.md).
//!
//! - A prompt row takes the tiled order when its ubatch (the physical batch
//!   llama.cpp computes at once) has 64+ rows and the cache is f16.
//! - A decode step takes the split-KV order over 512+ cells (f16 again).
//! - Every other row takes the one-chunk order.
//!
//! A row's order is fixed by the prompt it belongs to, as a cold
//! llama-server run batches it ([`ServerBatching`]), never by how strata
//! happens to chunk it: a prompt resumed on cached blocks computes each
//! row as the cold run does.

use std::ops::Range;

use crate::profile::KvType;

/// ggml's `GGML_FA_TILE_Q`: a ubatch of this many rows takes the tiled path.
pub const TILED_FROM_ROWS: usize = 64;

/// The attention order of one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowOrder {
    /// The whole span in one pass, V summed in f16.
    OneChunk,
    /// Keys in tiles of 64, V summed in f32 (f16 prompts of 64+ rows).
    Tiled,
    /// ggml's split-KV decode order (f16 decode steps past 512 cells).
    Split,
}

/// How llama-server cuts a prompt into batches and ubatches (its defaults:
/// `-b 2048 -ub 512`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerBatching {
    /// `-b`: tokens per `llama_decode`.
    pub n_batch: usize,
    /// `-ub`: rows computed at once.
    pub n_ubatch: usize,
    /// The model has sliding-window or recurrent layers: llama-server
    /// computes the prompt's last `4 + n_ubatch` and last 4 tokens as
    /// batches of their own, to checkpoint the state before them
    /// (server-context.cpp, `checkpoint_offsets`).
    pub checkpoints: bool,
}

impl ServerBatching {
    pub const DEFAULT_N_BATCH: usize = 2048;
    pub const DEFAULT_N_UBATCH: usize = 512;

    pub fn new(checkpoints: bool) -> Self {
        ServerBatching {
            n_batch: Self::DEFAULT_N_BATCH,
            n_ubatch: Self::DEFAULT_N_UBATCH,
            checkpoints,
        }
    }

    /// The batches of a cold `prompt_len`-token prompt, in order.
    pub fn batches(&self, prompt_len: usize) -> Vec<Range<usize>> {
        let offsets = [4 + self.n_ubatch, 4].map(|o| o.min(self.n_batch.max(1)));
        let mut out = Vec::new();
        let mut start = 0;
        while start < prompt_len {
            let mut end = (start + self.n_batch.max(1)).min(prompt_len);
            if self.checkpoints {
                // A batch ends at the first token after which `offset` remain.
                if let Some(cut) = offsets
                    .iter()
                    .filter_map(|&o| prompt_len.checked_sub(o))
                    .filter(|&cut| cut > start && cut < end)
                    .min()
                {
                    end = cut;
                }
            }
            out.push(start..end);
            start = end;
        }
        out
    }

    /// The ubatches of those batches: each cut into `n_ubatch` rows from
    /// its start.
    pub fn ubatches(&self, prompt_len: usize) -> Vec<Range<usize>> {
        split_ubatches(&self.batches(prompt_len), self.n_ubatch)
    }
}

/// `batches` cut into ubatches of `n_ubatch` rows from each one's start.
pub fn split_ubatches(batches: &[Range<usize>], n_ubatch: usize) -> Vec<Range<usize>> {
    let n = n_ubatch.max(1);
    batches
        .iter()
        .flat_map(|b| {
            (b.start..b.end)
                .step_by(n)
                .map(move |s| s..(s + n).min(b.end))
        })
        .collect()
}

/// The order of each prompt row, given the ubatches a cold run computes
/// the prompt in.
pub fn prompt_orders(kv: KvType, ubatches: &[Range<usize>]) -> Vec<RowOrder> {
    ubatches
        .iter()
        .flat_map(|u| {
            let order = if kv == KvType::F16 && u.len() >= TILED_FROM_ROWS {
                RowOrder::Tiled
            } else {
                RowOrder::OneChunk
            };
            std::iter::repeat_n(order, u.len())
        })
        .collect()
}

/// The order of the decode step at `pos` (a generated token fed back).
pub fn decode_order(kv: KvType, pos: usize) -> RowOrder {
    match kv.decode_order_differs_from() {
        Some(from) if pos >= from => RowOrder::Split,
        _ => RowOrder::OneChunk,
    }
}

/// The orders of a sequence's rows on a stage with `kv` K/V: its prompt's
/// as a cold llama-server run batches it, then its decode steps'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowOrders {
    pub kv: KvType,
    pub batching: ServerBatching,
}

impl RowOrders {
    /// The orders of a `prompt_len`-token prompt's rows.
    pub fn prompt(&self, prompt_len: usize) -> Vec<RowOrder> {
        prompt_orders(self.kv, &self.batching.ubatches(prompt_len))
    }

    /// How many first rows of a `prompt_len`-token prompt every longer
    /// prompt (a later turn) computes in the same orders: what a later
    /// turn can surely reuse of it.
    pub fn stable_prefix(&self, prompt_len: usize) -> usize {
        if self.kv != KvType::F16 {
            return prompt_len;
        }
        // A row not tiled here (a short last ubatch) is tiled in a prompt
        // whose ubatch there grows to 64 rows.
        let first_untiled = self
            .prompt(prompt_len)
            .iter()
            .position(|&o| o != RowOrder::Tiled)
            .unwrap_or(prompt_len);
        let b = &self.batching;
        if !b.checkpoints {
            return first_untiled;
        }
        // A longer prompt ends a batch `4 + n_ubatch` tokens before its
        // end, which can leave a ubatch of under 64 rows, not tiled, at
        // any multiple of `n_ubatch` from here on.
        let ub = b.n_ubatch.max(1);
        let offset = (4 + ub).min(b.n_batch.max(1));
        let hole = prompt_len
            .saturating_sub(offset + TILED_FROM_ROWS - 2)
            .div_ceil(ub)
            * ub;
        first_untiled.min(hole)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(r: &[Range<usize>]) -> Vec<usize> {
        r.iter().map(|r| r.len()).collect()
    }

    #[test]
    fn plain_models_cut_every_ubatch_from_zero() {
        let b = ServerBatching::new(false);
        assert_eq!(sizes(&b.ubatches(607)), [512, 95]);
        assert_eq!(sizes(&b.ubatches(2100)), [512, 512, 512, 512, 52]);
        assert!(b.ubatches(0).is_empty());
    }

    #[test]
    fn checkpointing_models_cut_before_the_last_516_and_4() {
        let b = ServerBatching::new(true);
        // 3000 - 516 = 2484: [0, 2048) [2048, 2484) [2484, 2996) [2996, 3000).
        assert_eq!(sizes(&b.batches(3000)), [2048, 436, 512, 4]);
        assert_eq!(sizes(&b.ubatches(3000)), [512, 512, 512, 512, 436, 512, 4]);
        assert_eq!(sizes(&b.batches(450)), [446, 4]);
        assert_eq!(sizes(&b.batches(4)), [4]);
        assert_eq!(sizes(&b.batches(3)), [3]);
    }

    /// Every longer prompt computes the stable prefix's rows in the same
    /// orders (checked against all longer prompts up to 1,100 tokens
    /// more), and the prefix is not needlessly short.
    #[test]
    fn the_stable_prefix_keeps_its_orders_in_every_longer_prompt() {
        for checkpoints in [false, true] {
            for kv in [KvType::F16, KvType::Q8_0] {
                let orders = RowOrders {
                    kv,
                    batching: ServerBatching::new(checkpoints),
                };
                for len in [1, 63, 64, 575, 576, 700, 1251, 1293, 3000] {
                    let stable = orders.stable_prefix(len);
                    let mine = orders.prompt(len);
                    for longer in len + 1..len + 1100 {
                        assert_eq!(
                            orders.prompt(longer)[..stable],
                            mine[..stable],
                            "{kv:?} checkpoints {checkpoints}: {len} then {longer}"
                        );
                    }
                    let floor = if kv != KvType::F16 {
                        len
                    } else if checkpoints {
                        len.saturating_sub(578 + 511)
                    } else {
                        len / 512 * 512
                    };
                    assert!(stable >= floor, "{kv:?} {checkpoints} {len}: {stable}");
                }
            }
        }
    }

    #[test]
    fn only_f16_prompts_of_64_rows_tile() {
        let u = ServerBatching::new(false).ubatches(512 + 63);
        let f16 = prompt_orders(KvType::F16, &u);
        assert_eq!(f16.len(), 575);
        assert!(f16[..512].iter().all(|&o| o == RowOrder::Tiled));
        assert!(f16[512..].iter().all(|&o| o == RowOrder::OneChunk));
        assert!(prompt_orders(KvType::Q8_0, &u)
            .iter()
            .all(|&o| o == RowOrder::OneChunk));
        assert_eq!(decode_order(KvType::F16, 300), RowOrder::Split);
        assert_eq!(decode_order(KvType::F16, 255), RowOrder::OneChunk);
        assert_eq!(decode_order(KvType::Q8_0, 9000), RowOrder::OneChunk);
    }
}
