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

/// The attention order of one row. The values go into the prefix cache's
/// block hashes, which sessions on disk keep: they must not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RowOrder {
    /// The whole span in one pass, V summed in f16.
    OneChunk = 0,
    /// Keys in tiles of 64, V summed in f32 (f16 prompts of 64+ rows).
    Tiled = 1,
    /// ggml's split-KV decode order (f16 decode steps past 512 cells).
    Split = 2,
}

/// How llama-server cuts a prompt into batches and ubatches (its defaults:
/// `-b 2048 -ub 512`; `n_batch` is taken to be a multiple of `n_ubatch`,
/// as llama-server's are unless set otherwise).
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

    /// How many first rows of a prompt computed in `prompt`'s orders a later turn (a
    /// longer prompt that starts with it) computes in the same orders:
    /// the rows before the first one this prompt does not tile (f16).
    /// Every longer prompt keeps them, except on a model with sliding-
    /// window or recurrent layers a prompt whose checkpoint batch (ending
    /// `4 + n_ubatch` before its end) leaves a ubatch of under 64 rows
    /// among them: about one length in eight
    /// ([`Self::checkpoint_leaves_short_ubatch`]).
    pub fn stable_prefix(&self, prompt: &[RowOrder]) -> usize {
        if self.kv != KvType::F16 {
            return prompt.len();
        }
        prompt
            .iter()
            .position(|&o| o != RowOrder::Tiled)
            .unwrap_or(prompt.len())
    }

    /// Whether a `prompt_len`-token prompt's checkpoint batch leaves a
    /// ubatch of under 64 rows before it, whose rows are not tiled (f16).
    pub fn checkpoint_leaves_short_ubatch(&self, prompt_len: usize) -> bool {
        let b = &self.batching;
        let offset = (4 + b.n_ubatch).min(b.n_batch.max(1));
        let short = prompt_len.saturating_sub(offset) % b.n_ubatch.max(1);
        self.kv == KvType::F16
            && b.checkpoints
            && prompt_len > offset
            && (1..TILED_FROM_ROWS).contains(&short)
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
    /// orders, unless its checkpoint batch leaves a short ubatch (checked
    /// against all longer prompts up to 1,100 tokens more), and the prefix
    /// is not needlessly short.
    #[test]
    fn the_stable_prefix_keeps_its_orders_in_longer_prompts() {
        for checkpoints in [false, true] {
            for kv in [KvType::F16, KvType::Q8_0] {
                let orders = RowOrders {
                    kv,
                    batching: ServerBatching::new(checkpoints),
                };
                for len in [1, 63, 64, 575, 576, 579, 700, 1091, 1251, 1293, 3000] {
                    let mine = orders.prompt(len);
                    let stable = orders.stable_prefix(&mine);
                    let mut kept = 0;
                    for longer in len + 1..len + 1100 {
                        if orders.checkpoint_leaves_short_ubatch(longer) {
                            continue;
                        }
                        kept += 1;
                        assert_eq!(
                            orders.prompt(longer)[..stable],
                            mine[..stable],
                            "{kv:?} checkpoints {checkpoints}: {len} then {longer}"
                        );
                    }
                    assert!(kept > 900, "{kept} longer prompts checked");
                    // Short: only by a short last ubatch, or the 4 tokens
                    // a checkpointing model ends on.
                    let floor = match (kv, checkpoints) {
                        (KvType::F16, false) if len % 512 < 64 => len / 512 * 512,
                        (KvType::F16, true)
                            if len < 4 + 64 || orders.checkpoint_leaves_short_ubatch(len) =>
                        {
                            0
                        }
                        (KvType::F16, true) => len.saturating_sub(4),
                        _ => len,
                    };
                    assert!(
                        stable >= floor,
                        "{kv:?} {checkpoints} {len}: {stable} < {floor}"
                    );
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
