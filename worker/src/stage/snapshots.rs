//! A stage's recurrent state snapshots for the prefix cache
//! (`state_snapshots.rs` says why): saving a sequence's state after a run,
//! and a new sequence resuming from one.

use strata_kernels::Backend;

use super::{Stage, StageError};
use crate::kv_blocks::BlockHash;

impl<B: Backend> Stage<B> {
    /// Snapshots held now.
    pub fn state_snapshots(&self) -> usize {
        self.snapshots.len()
    }

    /// The snapshot row a sequence starting on `prefix` resumes from: `None`
    /// for a stage without recurrent layers, an error when the stage has
    /// none for the prefix's last block.
    pub(super) fn snapshot_for(
        &self,
        seq: u64,
        prefix: &[BlockHash],
    ) -> Result<Option<u32>, StageError> {
        if self.recurrent.is_empty() {
            return Ok(None);
        }
        prefix
            .last()
            .and_then(|h| self.snapshots.row(h))
            .map(Some)
            .ok_or_else(|| {
                StageError::Batch(format!(
                    "sequence {seq} starts on {} cached blocks, but layers {}..{} hold no recurrent state snapshot after them",
                    prefix.len(),
                    self.range.first,
                    self.range.end
                ))
            })
    }

    /// Gives the new sequence `seq` a state slot holding snapshot `row`.
    pub(super) fn resume_from_snapshot(&mut self, seq: u64, row: u32) -> Result<(), StageError> {
        let slot = self.slots.hold(seq).map_err(StageError::Batch)?;
        for st in &mut self.recurrent {
            st.copy_row(&self.backend, row, slot)?;
        }
        Ok(())
    }

    /// Frees the snapshots under `hashes` (the coordinator's choice).
    pub fn drop_snapshots(&mut self, hashes: &[BlockHash]) {
        self.snapshots.drop_all(hashes);
    }

    /// After a batch ran, saves each `(sequence, hash)` of `saves`: the
    /// sequence's state now, after the prefix ending in block `hash`. A
    /// stage without recurrent layers has nothing to save.
    pub fn save_snapshots(&mut self, saves: &[(u64, BlockHash)]) -> Result<(), StageError> {
        if self.recurrent.is_empty() {
            return Ok(());
        }
        for &(seq, hash) in saves {
            let slot = self.slots.slot_of(seq).ok_or_else(|| {
                StageError::Batch(format!(
                    "a state snapshot of sequence {seq}, which holds no recurrent state here"
                ))
            })?;
            let Some(row) = self.snapshots.take(hash).map_err(StageError::Batch)? else {
                continue;
            };
            for st in &mut self.recurrent {
                st.copy_row(&self.backend, slot, row)?;
            }
        }
        Ok(())
    }
}
