//! A stage's memory: the one place that says what a worker allocates for a
//! range of layers. The planner places by it, the worker admits (or refuses)
//! a slice by it, `strata plan` prints it, and the stage's allocator sizes
//! its KV pool from the same [`StageLoad`].

use super::{KvType, MemoryProfile};
use crate::slice::LayerRange;

/// Tokens per KV block. A stage's KV pool is whole blocks shared by all its
/// layers and sequences (`strata_kernels::KV_BLOCK_TOKENS` is this constant).
pub const KV_BLOCK_TOKENS: usize = 32;

/// What a stage is loaded for besides its layers: the numbers a coordinator
/// sends in `LoadSlice`, and the planner plans with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageLoad {
    /// KV positions of the stage's pool over all sequences (`Stage::load`'s
    /// `kv_tokens`). The pool is whole blocks: see [`StageLoad::kv_blocks`].
    pub kv_tokens: usize,
    pub kv_type: KvType,
    /// Largest batch in tokens (activation scratch). A batch never has more
    /// tokens than the pool has positions, so at most that many count.
    pub batch_tokens: usize,
    /// Sequences held at once: the last stage keeps a row of logits for each,
    /// and every DeltaNet layer a recurrent state for each.
    pub sequences: usize,
}

impl StageLoad {
    /// `sequences` sequences of `seq_tokens` context each, every one in whole
    /// blocks: what the coordinator asks each stage for.
    pub fn for_sequences(
        seq_tokens: usize,
        sequences: usize,
        kv_type: KvType,
        batch_tokens: usize,
    ) -> StageLoad {
        StageLoad {
            kv_tokens: seq_tokens
                .div_ceil(KV_BLOCK_TOKENS)
                .saturating_mul(KV_BLOCK_TOKENS)
                .saturating_mul(sequences),
            kv_type,
            batch_tokens,
            sequences,
        }
    }

    /// Blocks in the stage's KV pool (at least one).
    pub fn kv_blocks(&self) -> usize {
        self.kv_tokens.div_ceil(KV_BLOCK_TOKENS).max(1)
    }

    /// KV positions the pool really has: `kv_tokens` up to whole blocks.
    pub fn kv_tokens_allocated(&self) -> usize {
        self.kv_blocks().saturating_mul(KV_BLOCK_TOKENS)
    }

    /// Blocks of a sliding-window layer's pool: each sequence keeps a ring
    /// of [`window_ring_blocks`] blocks (the window beside a whole batch),
    /// and a second ring as the prefix cache's snapshot
    /// ([`super::STATE_COPIES_PER_SEQ`]), capped at the full pool. `None`
    /// when the batch is not bounded (`batch_tokens` 0): the layer then
    /// gets the full pool.
    pub fn window_blocks(&self, window: usize) -> Option<usize> {
        if self.batch_tokens == 0 {
            return None;
        }
        let ring = window_ring_blocks(window, self.batch_tokens);
        Some(
            ring.saturating_mul(self.sequences.max(1) * super::STATE_COPIES_PER_SEQ)
                .min(self.kv_blocks()),
        )
    }

    /// Tokens of activation scratch: the batch, at most the pool.
    pub fn scratch_tokens(&self) -> usize {
        self.batch_tokens.min(self.kv_tokens_allocated())
    }
}

/// Blocks one sequence's ring holds in a sliding-window layer: the ring is a
/// circular buffer of positions, and a batch of `batch_tokens` needs its own
/// positions and the `window - 1` before its first at once (llama.cpp sizes
/// its SWA cache `n_swa + n_ubatch` cells alike).
pub fn window_ring_blocks(window: usize, batch_tokens: usize) -> usize {
    window
        .saturating_add(batch_tokens)
        .saturating_sub(1)
        .div_ceil(KV_BLOCK_TOKENS)
        .max(1)
}

/// Bytes a stage holds, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StageMemory {
    /// Layer weights, + the token embedding on the first stage, + the final
    /// norm and output head on the last (with tied embeddings that head is a
    /// second copy of the embedding table).
    pub weight_bytes: u64,
    /// Of `weight_bytes`, the routed experts (all of them are held, though a
    /// token reads only the ones it is routed to).
    pub expert_bytes: u64,
    /// The KV pools: every layer of the stage at [`StageLoad::kv_tokens`] in
    /// whole blocks, sliding-window layers at their rings.
    pub kv_bytes: u64,
    /// Recurrent state of the stage's DeltaNet layers for
    /// [`StageLoad::sequences`] sequences, whatever their context (0 for a
    /// stage of attention layers only).
    pub state_bytes: u64,
    /// f32 activations of [`StageLoad::scratch_tokens`] tokens, + the logits
    /// of [`StageLoad::sequences`] rows on the last stage.
    pub scratch_bytes: u64,
    /// `weight_bytes + kv_bytes + state_bytes + scratch_bytes`.
    pub total_bytes: u64,
}

/// Prefix sums over a profile for one [`StageLoad`], so any range's memory is
/// O(1) (the planner asks for every range). [`MemoryProfile::stage_memory`]
/// is this table asked once.
#[derive(Debug, Clone)]
pub struct StageMemoryTable {
    n_layers: usize,
    weight_prefix: Vec<u64>,
    expert_prefix: Vec<u64>,
    kv_prefix: Vec<u64>,
    state_prefix: Vec<u64>,
    embedding: u64,
    embedding_on_every_stage: bool,
    head: u64,
    scratch: u64,
    logits: u64,
}

impl MemoryProfile {
    /// What a stage holding `layers` allocates when loaded for `load`.
    ///
    /// A DeltaNet layer holds no KV but a recurrent state per sequence
    /// ([`StageMemory::state_bytes`]), which is the same at any context.
    ///
    /// KV: a sliding-window layer holds, per sequence, a ring of
    /// [`window_ring_blocks`] blocks ([`StageLoad::window_blocks`]) when the
    /// batch is bounded, as `Stage::load` allocates it; every other layer the
    /// full pool of [`StageLoad::kv_blocks`].
    pub fn stage_memory(&self, layers: LayerRange, load: &StageLoad) -> StageMemory {
        self.stage_memory_table(load).stage(layers)
    }

    /// [`MemoryProfile::stage_memory`] for many ranges of one load.
    pub fn stage_memory_table(&self, load: &StageLoad) -> StageMemoryTable {
        let prefix = |f: &dyn Fn(usize) -> u64| {
            let mut v = Vec::with_capacity(self.layers.len() + 1);
            v.push(0u64);
            for il in 0..self.layers.len() {
                v.push(v[il].saturating_add(f(il)));
            }
            v
        };
        let kv_tokens = load.kv_tokens_allocated() as u64;
        StageMemoryTable {
            n_layers: self.layers.len(),
            weight_prefix: prefix(&|il| self.layers[il].weight_bytes),
            expert_prefix: prefix(&|il| self.layers[il].expert_bytes),
            kv_prefix: prefix(&|il| {
                let l = &self.layers[il];
                let tokens = l
                    .kv_window_tokens
                    .and_then(|w| load.window_blocks(w))
                    .map_or(kv_tokens, |b| (b * KV_BLOCK_TOKENS) as u64);
                l.kv_bytes_per_token(load.kv_type).saturating_mul(tokens)
            }),
            state_prefix: prefix(&|il| {
                self.layers[il]
                    .state_bytes_per_seq
                    .saturating_mul(load.sequences as u64)
            }),
            embedding: self.embedding_bytes,
            embedding_on_every_stage: self.embedding_on_every_stage,
            // The last stage holds the MTP blocks beside the head.
            head: self.head_bytes + self.mtp_bytes,
            scratch: self
                .scratch_bytes_per_token
                .saturating_mul(load.scratch_tokens() as u64),
            logits: self.logits_bytes.saturating_mul(load.sequences as u64),
        }
    }
}

impl StageMemoryTable {
    /// The stage holding `layers` (clamped to the model's layers).
    pub fn stage(&self, layers: LayerRange) -> StageMemory {
        let end = layers.end.min(self.n_layers);
        let first = layers.first.min(end);
        let is_first = first == 0;
        let is_last = end == self.n_layers;
        let weight_bytes = (self.weight_prefix[end] - self.weight_prefix[first])
            .saturating_add(if is_first || self.embedding_on_every_stage {
                self.embedding
            } else {
                0
            })
            .saturating_add(if is_last { self.head } else { 0 });
        let kv_bytes = self.kv_prefix[end] - self.kv_prefix[first];
        let state_bytes = self.state_prefix[end] - self.state_prefix[first];
        let scratch_bytes = self
            .scratch
            .saturating_add(if is_last { self.logits } else { 0 });
        StageMemory {
            weight_bytes,
            expert_bytes: self.expert_prefix[end] - self.expert_prefix[first],
            kv_bytes,
            state_bytes,
            scratch_bytes,
            total_bytes: weight_bytes
                .saturating_add(kv_bytes)
                .saturating_add(state_bytes)
                .saturating_add(scratch_bytes),
        }
    }

    /// Scratch of a stage that is not the last (the part every stage has).
    pub fn scratch_bytes_per_stage(&self) -> u64 {
        self.scratch
    }

    pub fn n_layers(&self) -> usize {
        self.n_layers
    }
}
