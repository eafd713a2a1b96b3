//! A stage's decode steps as CUDA graphs (`Backend::run_layers`): the
//! layer range's launches are recorded once per batch shape and replayed,
//! so a token costs one graph launch instead of a dozen kernel launches a
//! layer, each a few microseconds of host time that the GPU waits for.
//!
//! What a replay reads must sit where the recording found it, so a graph
//! owns fixed buffers: the input rows, the output rows, and the batch's
//! index arrays (positions, KV slots, block tables, recurrent state runs),
//! which are refreshed before each launch. Everything a launch's shape
//! depends on is in its [`GraphKey`]: tokens, sequences, and the context
//! class that fixes the attention's split count (each block finds its own
//! positions on the device; each recurrent block its run). Whatever cannot
//! be recorded (an op copying host data, or one that refuses to record, as
//! `zero_rows` does) fails the capture, as it would on a GPU; that shape
//! then runs eagerly for good.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaSlice};

use super::attention::{MAX_SPLITS, MIN_SPLIT_POSITIONS};
use super::recurrent::batch_run_table;
use super::{device_error, CudaAct, CudaBackend};
use crate::backend::{BatchIndex, KernelError};
use crate::kv::KV_BLOCK_TOKENS;

/// Most tokens a recorded batch has: decode batches, whose kernels are
/// short enough for launch overhead to matter. Prompts' shapes rarely
/// repeat, and their kernels are long.
const MAX_GRAPH_TOKENS: usize = 8;
/// Graphs one stage keeps; past this, new shapes run eagerly.
const MAX_GRAPHS: usize = 64;

/// What fixes the launches of one layer-range run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct GraphKey {
    tokens: usize,
    seqs: usize,
    cols: usize,
    /// The longest context in units of attention's smallest split: the
    /// split count is a function of it (and of constants).
    context_class: usize,
}

enum Slot {
    /// Ran eagerly once: recorded on the next run (the first run is a
    /// warm-up, and a shape seen once may never come again).
    Seen,
    Recorded(Box<Recorded>),
    /// The capture failed: this shape runs eagerly.
    Refused,
}

/// A recorded graph, owned by one stage.
struct OwnedGraph(CudaGraph);

// SAFETY: a CUDA graph may be used from any thread as long as no two use it
// at once (the driver's rule); this one is reached only through its
// stage's `&mut CudaLayerRuns`.
unsafe impl Send for OwnedGraph {}

struct Recorded {
    graph: OwnedGraph,
    input: CudaSlice<f32>,
    output: CudaSlice<f32>,
    out_rows: usize,
    index: FixedIndex,
}

/// One stage's graphs (`Backend::LayerRuns`).
pub struct CudaLayerRuns {
    slots: HashMap<GraphKey, Slot>,
    enabled: bool,
    replays: u64,
}

impl CudaLayerRuns {
    /// Graphs on, unless `STRATA_CUDA_GRAPHS=0` (for comparisons).
    pub(super) fn new() -> Self {
        CudaLayerRuns {
            slots: HashMap::new(),
            enabled: std::env::var("STRATA_CUDA_GRAPHS").map_or(true, |v| v != "0"),
            replays: 0,
        }
    }

    /// Turns recording and replay on or off (what runs next is eager).
    pub fn set_enabled(&mut self, on: bool) {
        self.enabled = on;
    }

    /// Runs served by replaying a graph.
    pub fn replays(&self) -> u64 {
        self.replays
    }
}

/// The index arrays every layer of a batch reads, in one place so the
/// attention and a graph agree on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IndexRole {
    Positions,
    TokenSeq,
    /// Each token's KV slot.
    Slots,
    /// Where each sequence's block table starts in `Tables`.
    TableStart,
    Tables,
    /// (state slot, first token, token count) of each sequence's run, for
    /// the recurrent ops (`recurrent.rs`); empty without state slots.
    RecurrentRuns,
}

const N_ROLES: usize = 6;

const ROLES: [IndexRole; N_ROLES] = [
    IndexRole::Positions,
    IndexRole::TokenSeq,
    IndexRole::Slots,
    IndexRole::TableStart,
    IndexRole::Tables,
    IndexRole::RecurrentRuns,
];

/// A batch's index arrays on the host.
#[derive(Debug, Clone)]
pub(super) struct BatchArrays {
    arrays: [Vec<u32>; N_ROLES],
}

impl BatchArrays {
    /// Checks that every token's position has a block in its table.
    /// `seq_slots` are the sequences' recurrent state slots (none for a
    /// stage without recurrent layers).
    pub fn new(
        positions: &[u32],
        token_seq: &[u32],
        block_tables: &[&[u32]],
        seq_slots: &[u32],
    ) -> Result<Self, KernelError> {
        let mut table_start = Vec::with_capacity(block_tables.len());
        let mut tables = Vec::new();
        for t in block_tables {
            table_start.push(tables.len() as u32);
            tables.extend_from_slice(t);
        }
        let slots = positions
            .iter()
            .zip(token_seq)
            .map(|(&p, &s)| {
                let p = p as usize;
                let block = block_tables
                    .get(s as usize)
                    .and_then(|t| t.get(p / KV_BLOCK_TOKENS))
                    .ok_or_else(|| {
                        KernelError::Invalid(format!(
                            "position {p} of sequence {s} has no KV block in the batch's tables"
                        ))
                    })?;
                Ok(block * KV_BLOCK_TOKENS as u32 + (p % KV_BLOCK_TOKENS) as u32)
            })
            .collect::<Result<Vec<u32>, KernelError>>()?;
        Ok(BatchArrays {
            arrays: [
                positions.to_vec(),
                token_seq.to_vec(),
                slots,
                table_start,
                tables,
                batch_run_table(token_seq, seq_slots),
            ],
        })
    }

    pub fn get(&self, role: IndexRole) -> &[u32] {
        &self.arrays[role as usize]
    }
}

/// A graph's index arrays on the device, at fixed addresses. The block
/// tables get room to grow; a batch whose tables outgrow it is recorded
/// again.
struct FixedIndex {
    dev: [Arc<CudaSlice<u32>>; N_ROLES],
    /// The recurrent runs' length at recording (none, or 3 a sequence): a
    /// batch with another cannot replay what the ops launched for these.
    runs_len: usize,
}

/// While a graph is recorded, the arrays the ops must read (by role, not
/// by content: two arrays may hold the same values at recording and not
/// at replay).
pub(super) struct Region {
    host: BatchArrays,
    dev: [Arc<CudaSlice<u32>>; N_ROLES],
}

impl Region {
    pub fn get(&self, role: IndexRole, data: &[u32]) -> Result<Arc<CudaSlice<u32>>, KernelError> {
        if self.host.get(role) != data {
            return Err(KernelError::Invalid(format!(
                "{role:?} asked for under graph capture differ from the batch's"
            )));
        }
        Ok(self.dev[role as usize].clone())
    }
}

impl FixedIndex {
    fn new(b: &CudaBackend, arrays: &BatchArrays) -> Result<Self, KernelError> {
        let alloc = |role: IndexRole| -> Result<Arc<CudaSlice<u32>>, KernelError> {
            let len = arrays.get(role).len();
            let room = if role == IndexRole::Tables {
                (2 * len).max(64)
            } else {
                len
            };
            Ok(Arc::new(b.output::<u32>(room)?))
        };
        let dev = ROLES
            .iter()
            .map(|&role| alloc(role))
            .collect::<Result<Vec<_>, _>>()?;
        let mut fixed = FixedIndex {
            dev: dev
                .try_into()
                .map_err(|_| KernelError::Invalid("a graph's index arrays: one per role".into()))?,
            runs_len: arrays.get(IndexRole::RecurrentRuns).len(),
        };
        fixed.upload(b, arrays)?;
        Ok(fixed)
    }

    fn fits(&self, arrays: &BatchArrays) -> bool {
        arrays.get(IndexRole::RecurrentRuns).len() == self.runs_len
            && ROLES
                .iter()
                .all(|&r| arrays.get(r).len() <= self.dev[r as usize].len())
    }

    fn upload(&mut self, b: &CudaBackend, arrays: &BatchArrays) -> Result<(), KernelError> {
        for role in ROLES {
            let host = arrays.get(role);
            if host.is_empty() {
                continue;
            }
            let dev = Arc::get_mut(&mut self.dev[role as usize]).ok_or_else(|| {
                KernelError::Invalid("a graph's index array is still borrowed".into())
            })?;
            b.stream
                .memcpy_htod(host, &mut dev.slice_mut(..host.len()))
                .map_err(|e| device_error("index upload", e))?;
        }
        Ok(())
    }

    fn region(&self, arrays: &BatchArrays) -> Region {
        Region {
            host: arrays.clone(),
            dev: self.dev.clone(),
        }
    }
}

impl CudaBackend {
    /// `Backend::run_layers`: replays this shape's graph, records it on its
    /// second run, or runs `run` eagerly.
    pub(super) fn run_layers_graphed<E: From<KernelError>>(
        &self,
        runs: &mut CudaLayerRuns,
        index: &BatchIndex<'_>,
        x: CudaAct,
        run: &mut dyn FnMut(CudaAct) -> Result<CudaAct, E>,
    ) -> Result<CudaAct, E> {
        let tokens = index.positions.len();
        if !runs.enabled
            || self.profile.is_some()
            || tokens == 0
            || tokens > MAX_GRAPH_TOKENS
            || x.rows != tokens
        {
            return run(x);
        }
        let longest = index.positions.iter().max().map_or(0, |&p| p as usize + 1);
        let key = GraphKey {
            tokens,
            seqs: index.block_tables.len(),
            cols: x.cols,
            context_class: longest.div_ceil(MIN_SPLIT_POSITIONS).min(MAX_SPLITS),
        };
        let arrays = BatchArrays::new(
            index.positions,
            index.token_seq,
            index.block_tables,
            index.seq_slots,
        )?;
        if !index.seq_slots.is_empty() && arrays.get(IndexRole::RecurrentRuns).is_empty() {
            // State slots that make no valid runs: the ops say why, eagerly
            // (a failed capture would keep this shape eager for good).
            return run(x);
        }
        let recorded = match runs.slots.get(&key) {
            Some(Slot::Recorded(r)) => r.index.fits(&arrays),
            Some(Slot::Refused) => return run(x),
            Some(Slot::Seen) => false,
            None if runs.slots.len() < MAX_GRAPHS => {
                runs.slots.insert(key, Slot::Seen);
                return run(x);
            }
            None => return run(x),
        };
        if !recorded {
            match self.record(&arrays, &x, run) {
                Ok(r) => {
                    runs.slots.insert(key, Slot::Recorded(Box::new(r)));
                }
                Err(why) => {
                    tracing::debug!("{key:?} runs without a CUDA graph: {why}");
                    runs.slots.insert(key, Slot::Refused);
                    return run(x);
                }
            }
        }
        let Some(Slot::Recorded(r)) = runs.slots.get_mut(&key) else {
            unreachable!("recorded above");
        };
        runs.replays += 1;
        Ok(self.replay(r, &arrays, &x)?)
    }

    /// Records `run` over a copy of `x` into a graph (nothing runs yet).
    fn record<E>(
        &self,
        arrays: &BatchArrays,
        x: &CudaAct,
        run: &mut dyn FnMut(CudaAct) -> Result<CudaAct, E>,
    ) -> Result<Recorded, String> {
        let n = x.rows * x.cols;
        let setup = || -> Result<_, KernelError> {
            Ok((
                self.output::<f32>(n)?,
                self.output::<f32>(n)?,
                FixedIndex::new(self, arrays)?,
            ))
        };
        let (input, mut output, index) = setup().map_err(|e| e.to_string())?;
        *self.region.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((std::thread::current().id(), index.region(arrays)));
        let begun = self
            .stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL);
        // Inside the graph: the input copied into memory the graph owns (so
        // the layers may free or reuse it), the layers, their result copied
        // out; every allocation made here is freed here too.
        let captured = begun.is_ok().then(|| -> Result<usize, String> {
            let mut inner = self.output::<f32>(n).map_err(|e| e.to_string())?;
            self.stream
                .memcpy_dtod(&input, &mut inner)
                .map_err(|e| format!("{e:?}"))?;
            let inner = CudaAct {
                buf: inner,
                rows: x.rows,
                cols: x.cols,
            };
            let out = run(inner).map_err(|_| "an op failed under capture".to_string())?;
            if out.cols != x.cols || out.rows > x.rows {
                return Err(format!("the layers returned {} x {}", out.rows, out.cols));
            }
            let len = out.rows * out.cols;
            self.stream
                .memcpy_dtod(&out.buf.slice(..len), &mut output.slice_mut(..len))
                .map_err(|e| format!("{e:?}"))?;
            Ok(out.rows)
        });
        // An error met in a drop under capture is deferred to the next call.
        let deferred = self.ctx.check_err();
        let graph = match begun {
            Ok(()) => self.stream.end_capture(CUgraphInstantiate_flags(0)),
            Err(e) => Err(e),
        };
        *self.region.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let out_rows = captured.ok_or("capture did not begin")??;
        deferred.map_err(|e| format!("{e:?}"))?;
        let graph = graph
            .map_err(|e| format!("{e:?}"))?
            .ok_or("an empty graph")?;
        Ok(Recorded {
            graph: OwnedGraph(graph),
            input,
            output,
            out_rows,
            index,
        })
    }

    /// Runs a recorded graph over `x` and this batch's index arrays.
    fn replay(
        &self,
        r: &mut Recorded,
        arrays: &BatchArrays,
        x: &CudaAct,
    ) -> Result<CudaAct, KernelError> {
        r.index.upload(self, arrays)?;
        let n = x.rows * x.cols;
        self.stream
            .memcpy_dtod(&x.buf.slice(..n), &mut r.input.slice_mut(..n))
            .map_err(|e| device_error("graph input", e))?;
        r.graph
            .0
            .launch()
            .map_err(|e| device_error("graph launch", e))?;
        let len = r.out_rows * x.cols;
        let mut out = self.output::<f32>(len)?;
        self.stream
            .memcpy_dtod(&r.output.slice(..len), &mut out.slice_mut(..len))
            .map_err(|e| device_error("graph output", e))?;
        Ok(CudaAct {
            buf: out,
            rows: r.out_rows,
            cols: x.cols,
        })
    }
}
