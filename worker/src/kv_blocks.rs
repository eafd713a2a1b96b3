//! Which KV blocks each sequence owns, and which full blocks the prefix
//! cache keeps after their sequence ended. Pure bookkeeping: the blocks'
//! memory lives in the backend's cache.
//!
//! The coordinator decides what is kept and what is evicted (it sends the
//! same lists to every stage, so their caches stay alike); a stage never
//! evicts on its own.

use std::collections::HashMap;

use strata_kernels::{KvBlockId, KV_BLOCK_TOKENS};

/// The prefix hash of a full KV block: of every token from the sequence's
/// start to the block's end (the coordinator computes it).
pub type BlockHash = [u8; 16];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("KV cache full: sequence {seq} needs {needed} more blocks, {free} free")]
    Full {
        seq: u64,
        needed: usize,
        free: usize,
    },
    #[error("sequence {seq} cannot start on cached blocks: {why}")]
    Prefix { seq: u64, why: String },
}

#[derive(Debug, Default, Clone)]
struct SeqBlocks {
    blocks: Vec<KvBlockId>,
    /// Tokens written so far.
    len: usize,
    /// Its first blocks, attached from the prefix cache (shared, read-only).
    prefix: Vec<BlockHash>,
}

/// A full block the prefix cache keeps.
#[derive(Debug, Clone)]
struct Kept {
    block: KvBlockId,
    /// Live sequences that attached it.
    users: usize,
}

/// Hands out blocks of a fixed pool to sequences.
#[derive(Debug, Clone)]
pub struct BlockAllocator {
    free: Vec<KvBlockId>,
    n_blocks: usize,
    seqs: HashMap<u64, SeqBlocks>,
    kept: HashMap<BlockHash, Kept>,
}

impl BlockAllocator {
    pub fn new(n_blocks: usize) -> Self {
        // Pop from the end: lowest ids first.
        let free = (0..n_blocks as KvBlockId).rev().collect();
        BlockAllocator {
            free,
            n_blocks,
            seqs: HashMap::new(),
            kept: HashMap::new(),
        }
    }

    /// Full blocks the prefix cache keeps (part of [`Self::used_blocks`]).
    pub fn cached_blocks(&self) -> usize {
        self.kept.len()
    }

    /// The hashes of every kept block.
    pub fn cached_hashes(&self) -> impl Iterator<Item = BlockHash> + '_ {
        self.kept.keys().copied()
    }

    /// Tokens of `seq` on cached blocks, which no run may write again.
    pub fn prefix_tokens(&self, seq: u64) -> usize {
        self.seqs
            .get(&seq)
            .map_or(0, |s| s.prefix.len() * KV_BLOCK_TOKENS)
    }

    /// Starts the new sequence `seq` on the kept blocks `prefix` (all of
    /// them, or an error and nothing changes).
    pub fn attach(&mut self, seq: u64, prefix: &[BlockHash]) -> Result<(), KvError> {
        let err = |why: String| KvError::Prefix { seq, why };
        if self.seqs.contains_key(&seq) {
            return Err(err("it already holds blocks".into()));
        }
        if let Some(i) = prefix.iter().position(|h| !self.kept.contains_key(h)) {
            return Err(err(format!("block {i} of its prefix is not cached here")));
        }
        let blocks = prefix
            .iter()
            .map(|h| {
                let k = self.kept.get_mut(h).expect("checked above");
                k.users += 1;
                k.block
            })
            .collect();
        self.seqs.insert(
            seq,
            SeqBlocks {
                blocks,
                len: prefix.len() * KV_BLOCK_TOKENS,
                prefix: prefix.to_vec(),
            },
        );
        Ok(())
    }

    /// Ends `seq`, keeping its first `hashes.len()` full blocks under those
    /// hashes; a block whose hash is kept already (the same tokens) is
    /// freed. Blocks it attached stay kept. Unknown sequences and blocks
    /// past its full ones are ignored (the coordinator's view may be ahead).
    /// Returns the blocks it newly keeps (to save on disk).
    pub fn retain_and_release(
        &mut self,
        seq: u64,
        hashes: &[BlockHash],
    ) -> Vec<(BlockHash, KvBlockId)> {
        let mut newly_kept = Vec::new();
        let Some(s) = self.seqs.get_mut(&seq) else {
            return newly_kept;
        };
        let full = s.len / KV_BLOCK_TOKENS;
        let own = s.prefix.len();
        for (i, h) in hashes.iter().enumerate().take(full).skip(own) {
            if self.kept.contains_key(h) {
                continue;
            }
            self.kept.insert(
                *h,
                Kept {
                    block: s.blocks[i],
                    users: 0,
                },
            );
            newly_kept.push((*h, s.blocks[i]));
            // Taken out of the sequence so its release does not free it.
            s.blocks[i] = KvBlockId::MAX;
        }
        self.release(seq);
        newly_kept
    }

    /// Takes a free block to keep under `hash`, for a block read back from
    /// disk (the caller fills it, or [`Self::evict`]s it on failure).
    pub fn keep_free(&mut self, seq: u64, hash: BlockHash) -> Result<KvBlockId, KvError> {
        let block = self.free.pop().ok_or(KvError::Full {
            seq,
            needed: 1,
            free: 0,
        })?;
        self.kept.insert(hash, Kept { block, users: 0 });
        Ok(block)
    }

    /// Whether `hash` is kept.
    pub fn is_kept(&self, hash: &BlockHash) -> bool {
        self.kept.contains_key(hash)
    }

    /// Frees kept blocks no live sequence uses; returns how many it freed.
    pub fn evict(&mut self, hashes: &[BlockHash]) -> usize {
        let mut n = 0;
        for h in hashes {
            if self.kept.get(h).is_some_and(|k| k.users == 0) {
                let k = self.kept.remove(h).expect("checked");
                self.free.push(k.block);
                n += 1;
            }
        }
        n
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

    /// Returns a sequence's blocks to the pool (its attached prefix blocks
    /// stay kept).
    pub fn release(&mut self, seq: u64) {
        let Some(s) = self.seqs.remove(&seq) else {
            return;
        };
        for h in &s.prefix {
            if let Some(k) = self.kept.get_mut(h) {
                k.users = k.users.saturating_sub(1);
            }
        }
        let own = s.blocks.into_iter().skip(s.prefix.len());
        self.free.extend(own.filter(|&b| b != KvBlockId::MAX).rev());
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

    /// Kept blocks outlive their sequence, are shared by the sequences that
    /// attach them, and go back to the pool only when evicted unused.
    #[test]
    fn kept_blocks_are_shared_then_evicted() {
        let (h0, h1, h2) = ([0u8; 16], [1u8; 16], [2u8; 16]);
        let mut a = BlockAllocator::new(6);
        a.reserve(1, 2 * KV_BLOCK_TOKENS + 5).unwrap();
        assert_eq!(a.block_table(1), &[0, 1, 2]);
        // Three hashes for two full blocks: the third is ignored.
        a.retain_and_release(1, &[h0, h1, h2]);
        assert_eq!(
            (a.cached_blocks(), a.used_blocks(), a.free_blocks()),
            (2, 2, 4)
        );
        assert!(a.attach(2, &[h0, h2]).is_err(), "h2 is not kept");
        assert_eq!(a.n_sequences(), 0, "a failed attach takes nothing");
        a.attach(2, &[h0, h1]).unwrap();
        a.attach(3, &[h0]).unwrap();
        assert_eq!(a.seq_len(2), 2 * KV_BLOCK_TOKENS);
        assert_eq!(a.prefix_tokens(3), KV_BLOCK_TOKENS);
        a.reserve(2, 2 * KV_BLOCK_TOKENS + 1).unwrap();
        assert_eq!(a.block_table(2), &[0, 1, 2]);
        assert_eq!(a.block_table(3), &[0]);
        // In use: not evicted.
        assert_eq!(a.evict(&[h0, h1]), 0);
        a.release(3);
        // Sequence 2 keeps nothing new (its third block is not full); the
        // blocks it attached stay kept.
        a.retain_and_release(2, &[h0, h1, h2]);
        assert_eq!((a.cached_blocks(), a.used_blocks()), (2, 2));
        assert_eq!(a.evict(&[h1, h2]), 1);
        assert_eq!((a.cached_blocks(), a.free_blocks()), (1, 5));
        // The same tokens kept twice: the second block is freed.
        a.attach(4, &[h0]).unwrap();
        a.release(4);
        a.reserve(5, KV_BLOCK_TOKENS).unwrap();
        a.retain_and_release(5, &[h0]);
        assert_eq!((a.cached_blocks(), a.used_blocks()), (1, 1));
        assert_eq!(a.evict(&[h0]), 1);
        assert_eq!(a.free_blocks(), 6, "nothing leaks");
    }
}
