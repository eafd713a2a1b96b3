//! The KV blocks of a sliding-window pool: each sequence holds a ring of
//! `blocks_per_seq` blocks, taken on its first run and given back on
//! release, and position `p` lives in the ring's block `(p / 32) mod
//! blocks_per_seq`. The attention ops read a pool through a block table,
//! so a sequence's table for this pool lists its ring over and over
//! ([`WindowRings::table`]). Positions `p < q` share a slot exactly when
//! `q - p` is a multiple of the ring's positions, so a ring holds any run
//! of that many consecutive positions: the window before a batch and the
//! batch (`strata_model::profile::window_ring_blocks`).
//!
//! Rings past the first `live` are the prefix cache's snapshots
//! (`state_snapshots.rs`): a ring copied when a prompt reached a whole
//! block holds the window before it, so a later prompt starting on those
//! blocks resumes from a copy of it.

use std::collections::HashMap;

use strata_kernels::{KvBlockId, KV_BLOCK_TOKENS};

#[derive(Debug, Clone)]
pub struct WindowRings {
    window: usize,
    blocks_per_seq: usize,
    free: Vec<u32>,
    held: HashMap<u64, u32>,
}

/// One run of a batch, as the rings see it.
#[derive(Debug, Clone, Copy)]
pub struct WindowRun {
    pub seq: u64,
    pub start_pos: usize,
    pub n_tokens: usize,
    /// Positions the stage holds for the sequence.
    pub cached: usize,
}

impl WindowRings {
    /// `n_blocks / blocks_per_seq` rings (the pool's blocks, split), of
    /// which sequences take the first `live`; the others are snapshots'.
    pub fn new(window: usize, blocks_per_seq: usize, n_blocks: usize, live: usize) -> Self {
        let rings = (n_blocks / blocks_per_seq.max(1)).min(live);
        WindowRings {
            window,
            blocks_per_seq,
            // Pop from the end: lowest rings first.
            free: (0..rings as u32).rev().collect(),
            held: HashMap::new(),
        }
    }

    /// The ring `seq` holds, if any.
    pub fn ring_of(&self, seq: u64) -> Option<u32> {
        self.held.get(&seq).copied()
    }

    /// A ring for the new sequence `seq`, whose contents the caller sets
    /// (from a prefix-cache snapshot).
    pub fn hold(&mut self, seq: u64) -> Result<u32, String> {
        if self.held.contains_key(&seq) {
            return Err(format!(
                "sequence {seq} holds a sliding-window ring already"
            ));
        }
        let ring = self.free.pop().ok_or_else(|| self.none_free())?;
        self.held.insert(seq, ring);
        Ok(ring)
    }

    /// The pool blocks of ring `ring`.
    pub fn ring_blocks(&self, ring: u32) -> std::ops::Range<KvBlockId> {
        let first = ring as usize * self.blocks_per_seq;
        first as KvBlockId..(first + self.blocks_per_seq) as KvBlockId
    }

    fn none_free(&self) -> String {
        format!(
            "the sliding-window KV cache is full: {} sequences hold all its rings",
            self.held.len()
        )
    }

    pub fn window(&self) -> usize {
        self.window
    }
    pub fn blocks_per_seq(&self) -> usize {
        self.blocks_per_seq
    }

    /// Checks every run against the ring (a batch that would overwrite
    /// what it attends, a rewind past what the ring still holds) and takes
    /// rings for new sequences. All or nothing.
    pub fn admit(&mut self, runs: &[WindowRun]) -> Result<(), String> {
        let span = self.blocks_per_seq * KV_BLOCK_TOKENS;
        let mut new = 0;
        for r in runs {
            // The first query reads back window - 1 positions; nothing
            // written (by this run, or before a rewind) may be a whole ring
            // past the oldest of them.
            let oldest = r.start_pos.saturating_sub(self.window.saturating_sub(1));
            let end = (r.start_pos + r.n_tokens).max(r.cached);
            if end - oldest > span {
                return Err(format!(
                    "sequence {}: a run of {} tokens at position {} (with {} cached) does not fit the sliding-window cache's ring of {span} positions for a window of {}",
                    r.seq, r.n_tokens, r.start_pos, r.cached, self.window
                ));
            }
            new += usize::from(!self.held.contains_key(&r.seq));
        }
        if new > self.free.len() {
            return Err(self.none_free());
        }
        for r in runs {
            if !self.held.contains_key(&r.seq) {
                let ring = self.free.pop().expect("counted above");
                self.held.insert(r.seq, ring);
            }
        }
        Ok(())
    }

    /// `seq`'s block table for this pool, `len` blocks long (as long as its
    /// table in the full pools): its ring, repeated.
    pub fn table(&self, seq: u64, len: usize) -> Vec<KvBlockId> {
        let Some(&ring) = self.held.get(&seq) else {
            return Vec::new();
        };
        let first = ring as usize * self.blocks_per_seq;
        (0..len)
            .map(|i| (first + i % self.blocks_per_seq) as KvBlockId)
            .collect()
    }

    pub fn release(&mut self, seq: u64) {
        if let Some(ring) = self.held.remove(&seq) {
            self.free.push(ring);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seq: u64, start_pos: usize, n_tokens: usize, cached: usize) -> WindowRun {
        WindowRun {
            seq,
            start_pos,
            n_tokens,
            cached,
        }
    }

    #[test]
    fn rings_repeat_and_are_reused() {
        // Window 16, rings of 3 blocks (96 positions), 2 rings.
        let mut r = WindowRings::new(16, 3, 9, 2);
        r.admit(&[run(1, 0, 40, 0), run(2, 0, 5, 0)]).unwrap();
        assert_eq!(r.table(1, 5), [0, 1, 2, 0, 1]);
        assert_eq!(r.table(2, 2), [3, 4]);
        let err = r.admit(&[run(3, 0, 1, 0)]).unwrap_err();
        assert!(err.contains("full"), "{err}");
        r.release(1);
        r.admit(&[run(3, 0, 1, 0)]).unwrap();
        assert_eq!(r.table(3, 1), [0]);
        // The third ring is a snapshot's: sequences never take it.
        assert_eq!(r.ring_blocks(2), 6..9);
        assert!(r.hold(4).unwrap_err().contains("full"));
        r.release(2);
        assert_eq!((r.hold(4), r.ring_of(4)), (Ok(1), Some(1)));
    }

    #[test]
    fn runs_that_would_overwrite_what_they_attend_are_refused() {
        // Window 16, a ring of 96 positions: 15 back plus 81 written fit.
        let mut r = WindowRings::new(16, 3, 3, 1);
        r.admit(&[run(1, 0, 96, 0)]).unwrap();
        r.admit(&[run(1, 96, 81, 96)]).unwrap();
        let err = r.admit(&[run(1, 177, 82, 177)]).unwrap_err();
        assert!(err.contains("does not fit"), "{err}");
        // Rewinding to 100 after 177 is fine (85..177 is 92 positions); to
        // 90 it is not (75 was overwritten by 171).
        r.admit(&[run(1, 100, 1, 177)]).unwrap();
        let err = r.admit(&[run(1, 90, 1, 177)]).unwrap_err();
        assert!(err.contains("does not fit"), "{err}");
    }
}
