//! A stage: a contiguous layer range of one model on one backend.
//!
//! The first stage embeds tokens, the last applies the final norm and output
//! head. Between them, hidden states are `n_tokens x d_model` activations.

mod persist;
mod snapshots;
pub use persist::{LayerBlock, ReadLayer};

use strata_kernels::{Backend, BatchIndex, KernelError, KvGeometry, RecurrentBatch};
use strata_model::arch::ModelSpec;
use strata_model::profile::{window_ring_blocks, KvType, StageLoad, STATE_COPIES_PER_SEQ};
use strata_model::GgufFile;
pub use strata_model::LayerRange;

use crate::blocks::{BatchContext, Layer, MixerState, MtpHead, PerLayerInputs, RecurrentState};
use crate::kv_blocks::{BlockAllocator, BlockHash, KvError};
use crate::state_slots::{RunStart, StateSlots};
use crate::state_snapshots::StateSnapshots;
use crate::weights::WeightLoader;
use crate::window_rings::{WindowRings, WindowRun};

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{0}")]
    Model(String),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error("bad batch: {0}")]
    Batch(String),
}

/// One sequence's run of consecutive tokens in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSeq {
    pub seq: u64,
    /// Position of the first token of the run; earlier positions must be in
    /// the KV cache already. Positions at or past it are overwritten.
    pub start_pos: usize,
    pub n_tokens: usize,
    /// Which tokens of the run get logits (the last stage only).
    pub logits: LogitRows,
    /// The run is one generated token fed back: its attention takes the
    /// decode order (`AttentionBatch::decode`), as llama.cpp's decode
    /// step does, where a prompt row takes the prompt order.
    pub decode: bool,
    /// `tiled[i]`: token `i` of the run takes ggml's tiled order
    /// (`AttentionBatch::tiled`); empty when none does.
    pub tiled: Vec<bool>,
}

/// Tokens of a run whose logits the last stage returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitRows {
    /// The last token (generation).
    Last,
    /// Every token from this index of the run on (perplexity scores the
    /// second half of each chunk; `From(0)` is all of them).
    From(usize),
}

pub enum StageInput<A> {
    /// Token ids, all runs concatenated (first stage).
    Tokens(Vec<u32>),
    /// Hidden states from the previous stage, and the batch's token ids
    /// where the frame carried them (per-layer embeddings need them).
    Hidden { hidden: A, tokens: Vec<u32> },
}

pub enum StageOutput<A> {
    Hidden(A),
    /// Logit rows, in batch order, as each run's `LogitRows` asked.
    Logits(Vec<Vec<f32>>),
}

/// Where an attention layer's KV lives: its pool, and its layer in it.
#[derive(Debug, Clone, Copy)]
struct KvSlot {
    pool: usize,
    layer: usize,
}

/// A KV pool: full blocks under the sequences' block tables, or (a
/// sliding-window pool) a ring of blocks per sequence.
struct KvPool<B: Backend> {
    cache: B::KvCache,
    geometry: KvGeometry,
    rings: Option<WindowRings>,
}

pub struct Stage<B: Backend> {
    backend: B,
    spec: ModelSpec,
    range: LayerRange,
    /// The token embedding: on the first stage, and on every stage of a
    /// model with per-layer embeddings.
    embedding: Option<B::Weight>,
    /// Gemma 4 E-series: the stage's share of the per-layer tables.
    per_layer: Option<PerLayerInputs<B>>,
    layers: Vec<Layer<B>>,
    head: Option<(B::Weight, B::Weight)>,
    /// Qwen3.5's MTP blocks, beside the head (loaded, not run).
    mtp: Vec<MtpHead<B>>,
    rope_freqs: Option<B::Weight>,
    /// One KV pool per row shape (and sliding-window ring) among the
    /// stage's attention layers.
    kv: Vec<KvPool<B>>,
    /// Each layer's place in the KV pools; `None` for a recurrent layer.
    kv_layer: Vec<Option<KvSlot>>,
    blocks: BlockAllocator,
    /// Each DeltaNet layer's states (in layer order), and which slot each
    /// sequence holds.
    recurrent: Vec<RecurrentState<B>>,
    slots: StateSlots,
    /// The prefix cache's saved states, in the rows after the slots.
    snapshots: StateSnapshots,
    /// The backend's record of this stage's layer runs (CUDA graphs).
    layer_runs: B::LayerRuns,
    kv_type: KvType,
}

impl<B: Backend> Stage<B> {
    /// Loads layers `range` (with the embedding if it starts at 0 and the
    /// head if it ends at the last layer) and a KV pool for `kv_tokens`
    /// tokens of context over all sequences, for one sequence at a time
    /// where the model keeps recurrent state.
    pub fn load(
        backend: B,
        file: &GgufFile,
        range: LayerRange,
        kv_tokens: usize,
    ) -> Result<Self, StageError> {
        Self::load_kv(backend, file, range, kv_tokens, KvType::F16)
    }

    /// [`Self::load`] with K and V cached as `kv_type`.
    pub fn load_kv(
        backend: B,
        file: &GgufFile,
        range: LayerRange,
        kv_tokens: usize,
        kv_type: KvType,
    ) -> Result<Self, StageError> {
        let load = StageLoad {
            kv_tokens,
            kv_type,
            batch_tokens: 0,
            sequences: 1,
        };
        Self::load_for(backend, file, range, &load)
    }

    /// [`Self::load`] for what a plan asks: `load.sequences` sequences at
    /// once (a recurrent state slot and a sliding-window ring each; full KV
    /// blocks are shared by any number), and batches of at most
    /// `load.batch_tokens` tokens (0: unbounded, so sliding-window layers
    /// get full pools). The pools are what `MemoryProfile::stage_memory`
    /// counts for `load`.
    pub fn load_for(
        backend: B,
        file: &GgufFile,
        range: LayerRange,
        load: &StageLoad,
    ) -> Result<Self, StageError> {
        let spec = ModelSpec::from_gguf(file).map_err(|e| StageError::Model(e.to_string()))?;
        if range.is_empty() || range.end > spec.n_layers {
            return Err(StageError::Model(format!(
                "layer range {}..{} is not within the model's {} layers",
                range.first, range.end, spec.n_layers
            )));
        }
        let loader = WeightLoader {
            file,
            backend: &backend,
        };
        let (d, vocab) = (spec.d_model, spec.vocab_size);
        let is_first = range.first == 0;
        let is_last = range.end == spec.n_layers;
        let embedding = if is_first || spec.per_layer_input.is_some() {
            Some(loader.required("token_embd.weight", &[d, vocab])?)
        } else {
            None
        };
        let per_layer = PerLayerInputs::load(&loader, &spec, range)?;
        let mut layers = Vec::with_capacity(range.len());
        for il in range.first..range.end {
            layers.push(Layer::load(&loader, &spec, il)?);
        }
        let head = if is_last {
            let norm = loader.required("output_norm.weight", &[d])?;
            let out = match loader.optional("output.weight", &[d, vocab])? {
                Some(w) => w,
                None => loader.required("token_embd.weight", &[d, vocab])?,
            };
            Some((norm, out))
        } else {
            None
        };
        let mtp = if is_last {
            MtpHead::load_all(&loader, &spec)?
        } else {
            Vec::new()
        };
        let attention: Vec<_> = layers.iter().filter_map(|l| l.attention()).collect();
        // Layers that divide their RoPE frequencies by `rope_freqs` (all,
        // or Gemma 4's global ones) agree on its length.
        let rope_layer = attention
            .iter()
            .find(|a| a.spec().rope.freq_factors || !spec.per_layer_rope_factors());
        let rope_freqs = match rope_layer {
            Some(a) => loader.optional("rope_freqs.weight", &[a.spec().rope.dims / 2])?,
            None => None,
        };
        // The pools and the states are what the planner and the worker's
        // admission counted: `MemoryProfile::stage_memory` of this load.
        let load = StageLoad {
            sequences: load.sequences.max(1),
            ..*load
        };
        let n_blocks = load.kv_blocks();
        // One KV pool per row shape and ring (Gemma 4's sliding and global
        // layers differ in shape; sliding layers keep a ring per sequence),
        // read through each sequence's block table (a ring's repeated for
        // the ring pools). Recurrent layers have no KV.
        let mut pools: Vec<(KvGeometry, Option<WindowRings>)> = Vec::new();
        let mut kv_layer = Vec::with_capacity(layers.len());
        for (li, l) in layers.iter().enumerate() {
            // A layer reading another's KV takes that layer's place in the
            // pools; the planner keeps the two in one stage.
            if let Some(src) = l.attention().and_then(|a| a.spec().kv_source) {
                let il = range.first + li;
                let slot = src
                    .checked_sub(range.first)
                    .filter(|&s| s < li)
                    .and_then(|s| kv_layer[s]);
                kv_layer.push(Some(slot.ok_or_else(|| {
                    StageError::Model(format!(
                        "layer {il} reads the KV of layer {src}, which is not in this stage's layers {}..{}",
                        range.first, range.end
                    ))
                })?));
                continue;
            }
            kv_layer.push(l.attention().map(|a| {
                let a = a.spec();
                let ring = a.window.and_then(|w| {
                    let blocks = load.window_blocks(w)?;
                    let per_seq = window_ring_blocks(w, load.batch_tokens);
                    (blocks < n_blocks).then_some((w, per_seq, blocks))
                });
                let key = (a.n_kv_heads, a.head_dim, a.head_dim_v, ring);
                let pool = pools
                    .iter()
                    .position(|(g, r)| {
                        let r = r
                            .as_ref()
                            .map(|r| (r.window(), r.blocks_per_seq(), g.n_blocks));
                        (g.n_kv_heads, g.head_dim_k, g.head_dim_v, r) == key
                    })
                    .unwrap_or_else(|| {
                        let geometry = KvGeometry {
                            n_layers: 0,
                            n_kv_heads: key.0,
                            head_dim_k: key.1,
                            head_dim_v: key.2,
                            kv_type: load.kv_type,
                            n_blocks: ring.map_or(n_blocks, |r| r.2),
                        };
                        let rings = ring.map(|(w, per_seq, blocks)| {
                            WindowRings::new(w, per_seq, blocks, load.sequences)
                        });
                        pools.push((geometry, rings));
                        pools.len() - 1
                    });
                pools[pool].0.n_layers += 1;
                KvSlot {
                    pool,
                    layer: pools[pool].0.n_layers - 1,
                }
            }));
        }
        let mut recurrent = Vec::new();
        for l in &layers {
            if let Some(d) = l.delta_net() {
                recurrent.push(RecurrentState::new(
                    &backend,
                    d.spec(),
                    load.sequences * STATE_COPIES_PER_SEQ,
                )?);
            }
        }
        #[cfg(debug_assertions)]
        {
            let counted = strata_model::profile::MemoryProfile::from_gguf(file, &spec)
                .stage_memory(range, &load);
            assert_eq!(
                pools.iter().map(|(g, _)| g.pool_bytes()).sum::<u64>(),
                counted.kv_bytes,
                "the KV pools differ from the stage memory the planner counted"
            );
            let state: u64 = layers
                .iter()
                .filter_map(|l| l.delta_net())
                .map(|d| {
                    d.spec().state_bytes_per_seq() * (load.sequences * STATE_COPIES_PER_SEQ) as u64
                })
                .sum();
            assert_eq!(
                state, counted.state_bytes,
                "the recurrent state differs from what the planner counted"
            );
        }
        let kv = pools
            .into_iter()
            .map(|(g, rings)| {
                Ok(KvPool {
                    cache: backend.new_kv_cache(g)?,
                    geometry: g,
                    rings,
                })
            })
            .collect::<Result<Vec<_>, KernelError>>()?;
        let has_rings = kv.iter().any(|p| p.rings.is_some());
        Ok(Stage {
            kv_type: load.kv_type,
            spec,
            range,
            embedding,
            per_layer,
            layers,
            head,
            mtp,
            rope_freqs,
            kv,
            kv_layer,
            blocks: BlockAllocator::new(n_blocks),
            slots: StateSlots::new(if recurrent.is_empty() {
                0
            } else {
                load.sequences
            }),
            snapshots: if recurrent.is_empty() && !has_rings {
                StateSnapshots::new(0, 0)
            } else {
                StateSnapshots::new(
                    load.sequences as u32,
                    load.sequences * (STATE_COPIES_PER_SEQ - 1),
                )
            },
            recurrent,
            layer_runs: backend.layer_runs(),
            backend,
        })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }
    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }
    pub fn range(&self) -> LayerRange {
        self.range
    }
    pub fn backend(&self) -> &B {
        &self.backend
    }
    pub fn blocks(&self) -> &BlockAllocator {
        &self.blocks
    }
    /// The backend's record of this stage's layer runs (to turn CUDA graphs
    /// off, or count their replays).
    pub fn layer_runs_mut(&mut self) -> &mut B::LayerRuns {
        &mut self.layer_runs
    }
    pub fn is_first(&self) -> bool {
        self.range.first == 0
    }
    pub fn is_last(&self) -> bool {
        self.head.is_some()
    }
    /// MTP blocks this stage holds (the last stage of a model with them).
    pub fn mtp_blocks(&self) -> usize {
        self.mtp.len()
    }

    /// Frees a sequence's KV blocks, window rings and recurrent state slot.
    pub fn release(&mut self, seq: u64) {
        let _ = self.retain_and_release(seq, &[]);
    }

    /// [`Self::release`], keeping the sequence's first full blocks under
    /// `hashes` for the prefix cache. Returns
    /// the blocks it newly keeps.
    pub fn retain_and_release(
        &mut self,
        seq: u64,
        hashes: &[BlockHash],
    ) -> Vec<(BlockHash, strata_kernels::KvBlockId)> {
        let kept = self.blocks.retain_and_release(seq, hashes);
        self.slots.release(seq);
        for rings in self.kv.iter_mut().filter_map(|p| p.rings.as_mut()) {
            rings.release(seq);
        }
        kept
    }

    /// Frees every kept prefix block no sequence uses (a new pipeline).
    pub fn clear_cached(&mut self) {
        let all: Vec<BlockHash> = self.blocks.cached_hashes().collect();
        self.blocks.evict(&all);
        self.snapshots.clear();
    }

    /// Frees kept prefix blocks (the coordinator's eviction); how many.
    pub fn evict_cached(&mut self, hashes: &[BlockHash]) -> usize {
        // A snapshot resumes its prefix's blocks: it goes with its block.
        self.snapshots.drop_all(hashes);
        self.blocks.evict(hashes)
    }

    /// Starts the new sequence `seq` at `start_pos` on the kept blocks
    /// `prefix`, which hold its first `start_pos` tokens. Where a prompt
    /// resumes from a state snapshot, `snapshot_on_disk` reads the one
    /// after `prefix` from disk; without it the stage holds it in memory.
    pub fn attach_prefix(
        &mut self,
        seq: u64,
        start_pos: usize,
        prefix: &[BlockHash],
        snapshot_on_disk: Option<ReadLayer<'_>>,
    ) -> Result<(), StageError> {
        if start_pos != prefix.len() * strata_kernels::KV_BLOCK_TOKENS {
            return Err(StageError::Batch(format!(
                "sequence {seq} starts at position {start_pos} on {} cached blocks",
                prefix.len()
            )));
        }
        if let (Some(read), true) = (snapshot_on_disk, self.resumes_from_snapshots()) {
            self.blocks.attach(seq, prefix)?;
            return self
                .resume_from_disk(seq, read)
                .inspect_err(|_| self.release(seq));
        }
        let snapshot = self.snapshot_for(seq, prefix)?;
        self.blocks.attach(seq, prefix)?;
        if let Some(row) = snapshot {
            if let Err(e) = self.resume_from_snapshot(seq, row) {
                self.release(seq);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Sequences that hold a recurrent state slot, and how many slots there are.
    pub fn state_slots(&self) -> &StateSlots {
        &self.slots
    }

    /// Runs one batch through this stage's layers.
    pub fn forward(
        &mut self,
        batch: &[BatchSeq],
        input: StageInput<B::Act>,
    ) -> Result<StageOutput<B::Act>, StageError> {
        // On a rayon pool thread the CPU backend's parallel ops are joined by
        // the pool itself; called from outside, each op would put the caller
        // to sleep and wake it (a profile showed a third of the time there).
        rayon::scope(|_| self.forward_in_pool(batch, input))
    }

    fn forward_in_pool(
        &mut self,
        batch: &[BatchSeq],
        input: StageInput<B::Act>,
    ) -> Result<StageOutput<B::Act>, StageError> {
        let n_tokens: usize = batch.iter().map(|s| s.n_tokens).sum();
        if n_tokens == 0 {
            return Err(StageError::Batch("no tokens".into()));
        }
        let mut positions = Vec::with_capacity(n_tokens);
        let mut token_seq = Vec::with_capacity(n_tokens);
        let mut decode = Vec::with_capacity(n_tokens);
        let mut tiled = Vec::with_capacity(n_tokens);
        for (i, s) in batch.iter().enumerate() {
            if s.start_pos < self.blocks.prefix_tokens(s.seq) {
                return Err(StageError::Batch(format!(
                    "sequence {} would write position {} of its cached prefix of {} tokens",
                    s.seq,
                    s.start_pos,
                    self.blocks.prefix_tokens(s.seq)
                )));
            }
            if s.start_pos > self.blocks.seq_len(s.seq) {
                return Err(StageError::Batch(format!(
                    "sequence {} starts at position {} but only {} are cached",
                    s.seq,
                    s.start_pos,
                    self.blocks.seq_len(s.seq)
                )));
            }
            positions.extend((s.start_pos..s.start_pos + s.n_tokens).map(|p| p as u32));
            token_seq.extend(std::iter::repeat_n(i as u32, s.n_tokens));
            decode.extend(std::iter::repeat_n(s.decode && s.n_tokens == 1, s.n_tokens));
            if !s.tiled.is_empty() && s.tiled.len() != s.n_tokens {
                return Err(StageError::Batch(format!(
                    "sequence {}: {} row orders for {} tokens",
                    s.seq,
                    s.tiled.len(),
                    s.n_tokens
                )));
            }
            tiled.extend((0..s.n_tokens).map(|i| s.tiled.get(i).copied().unwrap_or(false)));
        }
        // The input is checked (and embedded) and the KV room counted
        // before any sequence's KV changes: a lying frame leaves the stage
        // as it was.
        let b = &self.backend;
        let spec = &self.spec;
        let is_first = self.range.first == 0;
        let (mut x, ids) = match (input, &self.embedding) {
            (StageInput::Tokens(ids), Some(emb)) if is_first => {
                if ids.len() != n_tokens {
                    return Err(StageError::Batch(format!(
                        "{} token ids for {n_tokens} positions",
                        ids.len()
                    )));
                }
                (
                    b.embed(emb, &ids, spec.embedding_scale.unwrap_or(1.0))?,
                    ids,
                )
            }
            (StageInput::Hidden { hidden, tokens }, _) if !is_first => {
                if b.act_shape(&hidden) != (n_tokens, spec.d_model) {
                    return Err(StageError::Batch(format!(
                        "hidden states of shape {:?}, expected ({n_tokens}, {})",
                        b.act_shape(&hidden),
                        spec.d_model
                    )));
                }
                (hidden, tokens)
            }
            (StageInput::Tokens(_), _) => {
                return Err(StageError::Batch("token ids sent to a middle stage".into()))
            }
            (StageInput::Hidden { .. }, _) => {
                return Err(StageError::Batch(
                    "hidden states sent to the first stage".into(),
                ))
            }
        };
        // Gemma 4 E-series: the stage's layers' inputs, from the token ids.
        let per_layer = match (&self.per_layer, &self.embedding) {
            (Some(p), Some(emb)) => {
                if ids.len() != n_tokens {
                    return Err(StageError::Batch(format!(
                        "{} token ids for {n_tokens} positions: a model with per-layer embeddings needs every token's id on every stage",
                        ids.len()
                    )));
                }
                Some((p.inputs(b, emb, &ids, spec.rms_eps)?, p.width()))
            }
            _ => None,
        };
        let new_blocks: usize = batch
            .iter()
            .map(|s| {
                let have = self.blocks.block_table(s.seq).len();
                (s.start_pos + s.n_tokens)
                    .div_ceil(strata_kernels::KV_BLOCK_TOKENS)
                    .saturating_sub(have)
            })
            .sum();
        if new_blocks > self.blocks.free_blocks() {
            return Err(StageError::Batch(format!(
                "the KV cache is full: the batch needs {new_blocks} more blocks, {} are free",
                self.blocks.free_blocks()
            )));
        }
        // Recurrent state cannot be rewound: a run continues its sequence
        // or starts it over from position 0 (a replay after failover).
        let seq_slots = if self.recurrent.is_empty() {
            Vec::new()
        } else {
            let runs: Vec<RunStart> = batch
                .iter()
                .map(|s| RunStart {
                    seq: s.seq,
                    start_pos: s.start_pos,
                    cached: self.blocks.seq_len(s.seq),
                })
                .collect();
            let (slots, fresh) = self.slots.admit(&runs).map_err(StageError::Batch)?;
            for st in &mut self.recurrent {
                st.clear(b, &fresh)?;
            }
            slots
        };
        let has_rings = self.kv.iter().any(|p| p.rings.is_some());
        let window_runs: Vec<WindowRun> = batch
            .iter()
            .filter(|_| has_rings)
            .map(|s| WindowRun {
                seq: s.seq,
                start_pos: s.start_pos,
                n_tokens: s.n_tokens,
                cached: self.blocks.seq_len(s.seq),
            })
            .collect();
        for rings in self.kv.iter_mut().filter_map(|p| p.rings.as_mut()) {
            rings.admit(&window_runs).map_err(StageError::Batch)?;
        }
        for s in batch {
            self.blocks.truncate(s.seq, s.start_pos);
            self.blocks.reserve(s.seq, s.start_pos + s.n_tokens)?;
        }

        let tables: Vec<&[u32]> = batch
            .iter()
            .map(|s| self.blocks.block_table(s.seq))
            .collect();
        // Each ring pool's tables: the sequence's ring, as long as its table.
        let ring_tables: Vec<Option<Vec<Vec<u32>>>> = self
            .kv
            .iter()
            .map(|p| {
                p.rings.as_ref().map(|r| {
                    batch
                        .iter()
                        .zip(&tables)
                        .map(|(s, t)| r.table(s.seq, t.len()))
                        .collect()
                })
            })
            .collect();
        let ring_table_refs: Vec<Option<Vec<&[u32]>>> = ring_tables
            .iter()
            .map(|t| t.as_ref().map(|t| t.iter().map(Vec::as_slice).collect()))
            .collect();
        // The rows the output head reads (last stage only). As in llama.cpp,
        // the model's last layer keeps only these after its attention
        // output: the rest of the layer is wasted on other rows, and its
        // matmuls then see llama.cpp's batch shapes (hence its rounding).
        let out_rows = self.head.as_ref().map(|_| {
            let mut rows = Vec::new();
            let mut offset = 0;
            for s in batch {
                match s.logits {
                    LogitRows::Last => rows.push(offset + s.n_tokens - 1),
                    LogitRows::From(first) => {
                        rows.extend(offset + first.min(s.n_tokens)..offset + s.n_tokens)
                    }
                }
                offset += s.n_tokens;
            }
            rows
        });
        let select = out_rows.as_deref().filter(|rows| rows.len() < n_tokens);
        let batch_ctx = BatchContext::<B> {
            positions: &positions,
            token_seq: &token_seq,
            decode: &decode,
            tiled: &tiled,
            block_tables: &tables,
            rope_freqs: self.rope_freqs.as_ref(),
            recurrent: RecurrentBatch {
                token_seq: &token_seq,
                seq_slots: &seq_slots,
            },
        };
        let index = BatchIndex {
            positions: &positions,
            token_seq: &token_seq,
            block_tables: &tables,
            // Each sequence's state slot: recorded graphs read them from here.
            seq_slots: &seq_slots,
        };
        let (layers, kv, first) = (&self.layers, &mut self.kv, self.range.first);
        let (kv_layer, recurrent) = (&self.kv_layer, &mut self.recurrent);
        let mut run_range = |mut x: B::Act| -> Result<B::Act, StageError> {
            let mut states = recurrent.iter_mut();
            for (li, layer) in layers.iter().enumerate() {
                let last_layer = first + li + 1 == spec.n_layers;
                let keep = select.filter(|_| last_layer && spec.out_rows_after_attention);
                let state = match kv_layer[li] {
                    Some(slot) => MixerState::Kv {
                        cache: &mut kv[slot.pool].cache,
                        layer: slot.layer,
                        tables: ring_table_refs[slot.pool].as_deref().unwrap_or(&tables),
                    },
                    None => MixerState::Recurrent(states.next().ok_or_else(|| {
                        StageError::Model("a DeltaNet layer has no state".into())
                    })?),
                };
                let input = match &per_layer {
                    Some((all, p)) => Some(b.columns(all, li * p, *p)?),
                    None => None,
                };
                x = layer.forward(b, spec, x, &batch_ctx, state, keep, input)?;
            }
            Ok(x)
        };
        // Rows kept inside the range vary with more than the batch's shape,
        // which a recorded run could not follow: those batches run as is; so
        // do stages with ring pools, whose tables are not the batch's index,
        // and stages with per-layer inputs, an input a recording does not
        // know of.
        let unrecorded = has_rings || per_layer.is_some();
        x = if unrecorded || (select.is_some() && spec.out_rows_after_attention) {
            run_range(x)?
        } else {
            b.run_layers(&mut self.layer_runs, &index, x, &mut run_range)?
        };
        if let Some(rows) = select.filter(|_| self.head.is_some() && !spec.out_rows_after_attention)
        {
            x = b.select_rows(&x, rows)?;
        }

        let Some((norm, out)) = &self.head else {
            return Ok(StageOutput::Hidden(x));
        };
        let mut logits = b.matmul(out, &b.rms_norm(&x, norm, spec.rms_eps)?)?;
        if let Some(cap) = spec.final_softcap {
            // Gemma 4: cap · tanh(logits / cap), as ggml's scale, tanh, scale.
            b.scale(&mut logits, 1.0 / cap)?;
            b.unary(&mut logits, strata_kernels::Unary::Tanh)?;
            b.scale(&mut logits, cap)?;
        }
        let logits = b.act_to_host(&logits)?;
        Ok(StageOutput::Logits(
            logits
                .chunks(spec.vocab_size)
                .map(<[f32]>::to_vec)
                .collect(),
        ))
    }
}
