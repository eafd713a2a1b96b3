//! A stage's state snapshots for the prefix cache (`state_snapshots.rs`
//! says why): saving a sequence's state after a run, and a new sequence
//! resuming from one. The state is each DeltaNet layer's recurrent row and
//! each sliding-window pool's ring; snapshot `r` is state row `r` and ring
//! `r` of every such pool (both after the live sequences' own).

use strata_kernels::{Backend, KernelError};

use super::{Stage, StageError};
use crate::kv_blocks::BlockHash;

impl<B: Backend> Stage<B> {
    /// Whether a prompt resumes from a snapshot here, not from blocks alone:
    /// the stage has recurrent layers or sliding-window rings.
    pub fn resumes_from_snapshots(&self) -> bool {
        !self.recurrent.is_empty() || self.kv.iter().any(|p| p.rings.is_some())
    }

    /// The snapshot a sequence starting on `prefix` resumes from: `None`
    /// for a stage whose blocks are all it needs, an error when the stage
    /// has none for the prefix's last block.
    pub(super) fn snapshot_for(
        &self,
        seq: u64,
        prefix: &[BlockHash],
    ) -> Result<Option<u32>, StageError> {
        if !self.resumes_from_snapshots() {
            return Ok(None);
        }
        prefix
            .last()
            .and_then(|h| self.snapshots.row(h))
            .map(Some)
            .ok_or_else(|| {
                StageError::Batch(format!(
                    "sequence {seq} starts on {} cached blocks, but layers {}..{} hold no state snapshot after them",
                    prefix.len(),
                    self.range.first,
                    self.range.end
                ))
            })
    }

    /// Gives the new sequence `seq` a state slot and rings holding snapshot
    /// `row`.
    pub(super) fn resume_from_snapshot(&mut self, seq: u64, row: u32) -> Result<(), StageError> {
        if !self.recurrent.is_empty() {
            let slot = self.slots.hold(seq).map_err(StageError::Batch)?;
            for st in &mut self.recurrent {
                st.copy_row(&self.backend, row, slot)?;
            }
        }
        for pool in 0..self.kv.len() {
            let Some(rings) = self.kv[pool].rings.as_mut() else {
                continue;
            };
            let ring = rings.hold(seq).map_err(StageError::Batch)?;
            self.copy_ring(pool, row, ring)?;
        }
        Ok(())
    }

    /// Frees the snapshots under `hashes` (the coordinator's choice).
    pub fn drop_snapshots(&mut self, hashes: &[BlockHash]) {
        self.snapshots.drop_all(hashes);
    }

    /// After a batch ran, saves each `(sequence, hash)` of `saves`: the
    /// sequence's state now, after the prefix ending in block `hash`. A
    /// stage whose blocks are all it needs has nothing to save. Returns the
    /// snapshots newly saved, with their rows (to write to disk).
    pub fn save_snapshots(
        &mut self,
        saves: &[(u64, BlockHash)],
    ) -> Result<Vec<(BlockHash, u32)>, StageError> {
        let mut saved = Vec::new();
        if !self.resumes_from_snapshots() {
            return Ok(saved);
        }
        let missing = |seq: u64| {
            StageError::Batch(format!(
                "a state snapshot of sequence {seq}, which holds no state here"
            ))
        };
        for &(seq, hash) in saves {
            let slot = if self.recurrent.is_empty() {
                None
            } else {
                Some(self.slots.slot_of(seq).ok_or_else(|| missing(seq))?)
            };
            let rings: Vec<(usize, u32)> = self
                .kv
                .iter()
                .enumerate()
                .filter_map(|(i, p)| Some((i, p.rings.as_ref()?.ring_of(seq))))
                .map(|(i, r)| r.map(|r| (i, r)).ok_or_else(|| missing(seq)))
                .collect::<Result<_, _>>()?;
            let Some(row) = self.snapshots.take(hash).map_err(StageError::Batch)? else {
                continue;
            };
            if let Some(slot) = slot {
                for st in &mut self.recurrent {
                    st.copy_row(&self.backend, slot, row)?;
                }
            }
            for (pool, ring) in rings {
                self.copy_ring(pool, ring, row)?;
            }
            saved.push((hash, row));
        }
        Ok(saved)
    }

    /// Copies ring `from` of sliding-window pool `pool` over ring `to`, in
    /// every layer of the pool (through the host: a ring is the window's
    /// blocks, copied once per prompt).
    fn copy_ring(&mut self, pool: usize, from: u32, to: u32) -> Result<(), KernelError> {
        let p = &mut self.kv[pool];
        let rings = p.rings.as_ref().expect("a ring pool");
        for layer in 0..p.geometry.n_layers {
            for (f, t) in rings.ring_blocks(from).zip(rings.ring_blocks(to)) {
                let bytes = self.backend.kv_block_to_host(&p.cache, layer, f)?;
                self.backend
                    .kv_block_from_host(&mut p.cache, layer, t, &bytes)?;
            }
        }
        Ok(())
    }
}
