//! Which state snapshots every stage holds, for the prefix cache of a model
//! whose blocks alone cannot resume a prompt: Qwen3.5's DeltaNet layers
//! need their recurrent state after the prefix, Gemma's sliding-window
//! layers their ring (`worker/src/state_snapshots.rs`). A snapshot is keyed
//! by the prefix hash of the block it ends with. The coordinator decides,
//! as for kept blocks: the stages save, drop and resume snapshots as its
//! frames say.

use std::collections::HashMap;

use super::prefix_cache::BlockHash;

#[derive(Debug, Clone, Copy)]
struct Snapshot {
    /// Sequences to resume from it whose first frame has not gone yet (it
    /// must not be dropped before that frame).
    waiting: usize,
    /// When one was last saved or resumed (the LRU order).
    last_used: u64,
}

#[derive(Debug)]
pub struct SnapshotIndex {
    /// Snapshots each stage has room for.
    capacity: usize,
    held: HashMap<BlockHash, Snapshot>,
}

impl SnapshotIndex {
    pub fn new(capacity: usize) -> Self {
        SnapshotIndex {
            capacity,
            held: HashMap::new(),
        }
    }

    pub fn has(&self, hash: &BlockHash) -> bool {
        self.held.contains_key(hash)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.held.len()
    }

    /// A prompt will resume from the snapshot of `hash`.
    pub fn reserve(&mut self, hash: &BlockHash, now: u64) {
        if let Some(s) = self.held.get_mut(hash) {
            s.waiting += 1;
            s.last_used = now;
        }
    }

    /// The first frame of a prompt resuming from `hash` is built (or the
    /// prompt ended before it): the stages copy the snapshot in that frame,
    /// before they drop any it names.
    pub fn release(&mut self, hash: &BlockHash) {
        if let Some(s) = self.held.get_mut(hash) {
            s.waiting = s.waiting.saturating_sub(1);
        }
    }

    /// Room for a new snapshot of `hash`, which the frame being built
    /// saves: the snapshots that frame drops first (the least recently used
    /// no prompt waits for), or `None` when the stages hold it already or
    /// every row is taken by one a prompt waits for.
    pub fn save(&mut self, hash: BlockHash, now: u64) -> Option<Vec<BlockHash>> {
        if self.capacity == 0 || self.held.contains_key(&hash) {
            return None;
        }
        let mut dropped = Vec::new();
        if self.held.len() >= self.capacity {
            let (victim, _) = self
                .held
                .iter()
                .filter(|(_, s)| s.waiting == 0)
                .min_by_key(|(h, s)| (s.last_used, **h))?;
            let victim = *victim;
            self.held.remove(&victim);
            dropped.push(victim);
        }
        self.held.insert(
            hash,
            Snapshot {
                waiting: 0,
                last_used: now,
            },
        );
        Some(dropped)
    }

    /// Snapshots the stages no longer hold (their block was evicted, or the
    /// frame that saved them failed).
    /// Returns those that were held.
    pub fn forget(&mut self, hashes: &[BlockHash]) -> Vec<BlockHash> {
        (hashes.iter())
            .filter(|h| self.held.remove(*h).is_some())
            .copied()
            .collect()
    }

    pub fn clear(&mut self) {
        self.held.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_into_free_rows_then_drops_the_oldest_no_prompt_waits_for() {
        let (a, b, c, d) = ([1u8; 16], [2u8; 16], [3u8; 16], [4u8; 16]);
        let mut s = SnapshotIndex::new(2);
        assert_eq!(s.save(a, 1), Some(vec![]));
        assert_eq!(s.save(a, 2), None, "held already");
        s.reserve(&a, 2);
        assert_eq!(s.save(b, 3), Some(vec![]));
        // Full: a is the oldest, but a prompt waits to resume from it.
        assert_eq!(s.save(c, 4), Some(vec![b]));
        assert!(s.has(&a) && s.has(&c) && !s.has(&b));
        // Both rows wanted: nothing is saved.
        s.reserve(&c, 5);
        assert_eq!(s.save(d, 6), None);
        s.release(&a);
        assert_eq!(s.save(d, 7), Some(vec![a]));
        s.forget(&[c]);
        assert_eq!(s.len(), 1);
        assert_eq!(SnapshotIndex::new(0).save(a, 1), None, "no rows");
    }
}
