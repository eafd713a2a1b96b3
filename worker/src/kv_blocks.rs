//! Which KV blocks each sequence owns. Pure bookkeeping: the blocks' memory
//! lives in the backend's cache.

use std::collections::HashMap;

use strata_kernels::{KvBlockId, KV_BLOCK_TOKENS};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("KV cache full: sequence {seq} needs {needed} more blocks, {free} free")]
    Full {
        seq: u64,
        needed: usize,
        free: usize,
    },
}

#[derive(Debug, Default, Clone)]
struct SeqBlocks {
    blocks: Vec<KvBlockId>,
    /// Tokens written so far.
    len: usize,
}

/// Hands out blocks of a fixed pool to sequences.
#[derive(Debug, Clone)]
pub struct BlockAllocator {
    free: Vec<KvBlockId>,
    n_blocks: usize,
    seqs: HashMap<u64, SeqBlocks>,
}

impl BlockAllocator {
    pub fn new(n_blocks: usize) -> Self {
        // Pop from the end: lowest ids first.
        let free = (0..n_blocks as KvBlockId).rev().collect();
        BlockAllocator {
            free,
            n_blocks,
            seqs: HashMap::new(),
        }
    }

    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }
    pub fn used_blocks(&self) -> usize {
        self.n_blocks - self.free.len()
    }
    pub fn n_sequences(&self) -> usize {
        self.seqs.len()
    }

    /// Tokens held for `seq` (0 for an unknown sequence).
    pub fn seq_len(&self, seq: u64) -> usize {
        self.seqs.get(&seq).map_or(0, |s| s.len)
    }

    /// Makes room for `seq` to grow to `new_len` tokens; all or nothing.
    pub fn reserve(&mut self, seq: u64, new_len: usize) -> Result<(), KvError> {
        let have = self.seqs.get(&seq).map_or(0, |s| s.blocks.len());
        let want = new_len.div_ceil(KV_BLOCK_TOKENS);
        let needed = want.saturating_sub(have);
        if needed > self.free.len() {
            return Err(KvError::Full {
                seq,
                needed,
                free: self.free.len(),
            });
        }
        let entry = self.seqs.entry(seq).or_default();
        for _ in 0..needed {
            entry.blocks.push(self.free.pop().expect("checked above"));
        }
        entry.len = entry.len.max(new_len);
        Ok(())
    }

    /// Forgets tokens past `len` (the blocks stay with the sequence).
    pub fn truncate(&mut self, seq: u64, len: usize) {
        if let Some(s) = self.seqs.get_mut(&seq) {
            s.len = s.len.min(len);
        }
    }

    pub fn block_table(&self, seq: u64) -> &[KvBlockId] {
        self.seqs.get(&seq).map_or(&[], |s| &s.blocks)
    }

    /// Returns a sequence's blocks to the pool.
    pub fn release(&mut self, seq: u64) {
        if let Some(s) = self.seqs.remove(&seq) {
            self.free.extend(s.blocks.into_iter().rev());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_and_release() {
        let mut a = BlockAllocator::new(4);
        a.reserve(1, KV_BLOCK_TOKENS + 1).unwrap();
        assert_eq!(a.block_table(1), &[0, 1]);
        assert_eq!(a.free_blocks(), 2);
        a.reserve(2, 1).unwrap();
        assert_eq!(a.block_table(2), &[2]);
        let err = a.reserve(2, 3 * KV_BLOCK_TOKENS).unwrap_err();
        assert_eq!(
            err,
            KvError::Full {
                seq: 2,
                needed: 2,
                free: 1
            }
        );
        assert_eq!(a.block_table(2), &[2], "a failed reserve takes nothing");
        a.release(1);
        assert_eq!(a.free_blocks(), 3);
        a.reserve(2, 3 * KV_BLOCK_TOKENS).unwrap();
        assert_eq!(a.block_table(2).len(), 3);
        assert_eq!(a.seq_len(2), 3 * KV_BLOCK_TOKENS);
    }
}
