//! The prefix cache's state snapshots. A prompt's blocks alone cannot
//! resume Qwen3.5 (its DeltaNet layers need their recurrent state after
//! exactly those tokens) or Gemma (a sliding-window layer's ring holds the
//! window before them). So the coordinator cuts a prompt at its last whole
//! block and has each stage copy the sequence's state there into snapshot
//! `r`, keyed by that block's prefix hash; a later prompt starting on those
//! blocks copies it back into its own slot and rings. Snapshot `r` is state
//! row `r` of every recurrent layer and ring `r` of every window pool, after
//! the live sequences' own (`STATE_COPIES_PER_SEQ`). As with kept blocks,
//! the coordinator decides which snapshots exist and the stages obey.

use std::collections::HashMap;

use crate::kv_blocks::BlockHash;

#[derive(Debug, Clone)]
pub struct StateSnapshots {
    /// Free rows of `first .. first + count`.
    free: Vec<u32>,
    held: HashMap<BlockHash, u32>,
}

impl StateSnapshots {
    /// `count` snapshot rows from state row `first` on.
    pub fn new(first: u32, count: usize) -> Self {
        StateSnapshots {
            // Pop from the end: lowest rows first.
            free: (first..first + count as u32).rev().collect(),
            held: HashMap::new(),
        }
    }

    /// Snapshots held now.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The row holding the state after the prefix ending in block `hash`.
    pub fn row(&self, hash: &BlockHash) -> Option<u32> {
        self.held.get(hash).copied()
    }

    /// A row for a new snapshot under `hash`: `None` when one is held
    /// already (the same prefix gives the same state: nothing to copy).
    pub fn take(&mut self, hash: BlockHash) -> Result<Option<u32>, String> {
        if self.held.contains_key(&hash) {
            return Ok(None);
        }
        let row = self.free.pop().ok_or_else(|| {
            format!(
                "no free state snapshot row: all {} hold one (the coordinator drops one first)",
                self.held.len()
            )
        })?;
        self.held.insert(hash, row);
        Ok(Some(row))
    }

    /// Frees the snapshots under `hashes` (those not held are skipped).
    pub fn drop_all(&mut self, hashes: &[BlockHash]) {
        for h in hashes {
            if let Some(row) = self.held.remove(h) {
                self.free.push(row);
            }
        }
    }

    /// Frees every snapshot (a new pipeline).
    pub fn clear(&mut self) {
        let all: Vec<BlockHash> = self.held.keys().copied().collect();
        self.drop_all(&all);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_take_free_rows_once_per_prefix_and_give_them_back() {
        let (a, b, c) = ([1u8; 16], [2u8; 16], [3u8; 16]);
        let mut s = StateSnapshots::new(4, 2);
        assert_eq!(s.take(a), Ok(Some(4)));
        assert_eq!(s.take(a), Ok(None), "the same prefix is saved once");
        assert_eq!(s.take(b), Ok(Some(5)));
        let err = s.take(c).unwrap_err();
        assert!(err.contains("no free state snapshot row"), "{err}");
        assert_eq!((s.row(&a), s.row(&c)), (Some(4), None));
        s.drop_all(&[a, c]);
        assert_eq!((s.len(), s.row(&a)), (1, None));
        assert_eq!(s.take(c), Ok(Some(4)));
        s.clear();
        assert!(s.is_empty());
        // Both rows free again, in either order.
        let rows = [s.take(a), s.take(b)];
        assert!(
            rows == [Ok(Some(4)), Ok(Some(5))] || rows == [Ok(Some(5)), Ok(Some(4))],
            "{rows:?}"
        );
    }
}
