//! The automatic prefix cache's index: which full KV blocks every stage
//! keeps after their sequence ended, keyed by a hash of all tokens up to
//! the block's end and the attention order each row was computed in
//! (`strata_model::attention_order`), and which to evict when a batch
//! needs room. A prompt reuses a block only where it would compute every
//! row before the block's end in the same order, so the bits are a cold
//! run's.
//!
//! The coordinator decides for all stages and sends them the same lists
//! (`RetainBlocks`, `evict_first`), so their caches match this index block
//! for block and a stage never evicts on its own. Each stage's pool has the
//! same number of blocks (every stage is loaded for the same context).
//!
//! With sessions on disk (workers with `--kv-cache-dir`) it also knows
//! which blocks every stage can read back: those they listed when the
//! pipeline was attached, and those it evicted since (saved when kept). A
//! prompt attaches them after its kept blocks, to be restored by its first
//! frame; one that a stage cannot read is [`PrefixCache::forget`]ten. The
//! same goes for state snapshots (a model that resumes from them): those
//! on every stage's disk, and those dropped from memory since.

use std::collections::{HashMap, HashSet};

use strata_model::attention_order::RowOrder;
use strata_model::profile::KV_BLOCK_TOKENS;

use super::prefix_snapshots::SnapshotIndex;

/// The prefix hash of a full KV block (16 bytes of blake3).
pub type BlockHash = [u8; 16];

/// Prefix hashes of the full blocks of `tokens`, whose rows were computed
/// in `orders` (one per token): block `i`'s covers tokens `0 .. 32 (i + 1)`,
/// chained so that equal hashes mean equal prefixes computed alike.
pub fn block_hashes(tokens: &[u32], orders: &[RowOrder]) -> Vec<BlockHash> {
    assert_eq!(tokens.len(), orders.len(), "an order per token");
    let mut prev = [0u8; 16];
    tokens
        .chunks_exact(KV_BLOCK_TOKENS)
        .zip(orders.chunks_exact(KV_BLOCK_TOKENS))
        .map(|(block, orders)| {
            let mut h = blake3::Hasher::new();
            h.update(b"strata kv prefix v2");
            h.update(&prev);
            for (t, &o) in block.iter().zip(orders) {
                h.update(&t.to_le_bytes());
                h.update(&[o as u8]);
            }
            prev.copy_from_slice(&h.finalize().as_bytes()[..16]);
            prev
        })
        .collect()
}

#[derive(Debug, Clone, Copy)]
struct Kept {
    /// Live sequences started on this block.
    users: usize,
    /// When a sequence last used or kept it (the LRU order).
    last_used: u64,
    /// Its index in its prefix: of blocks used alike, the deepest go
    /// first (a prefix is matched from its first block on, so evicting an
    /// early block would strand the ones after it).
    depth: usize,
}

/// What the stages keep, as the coordinator made them keep it.
#[derive(Debug)]
pub struct PrefixCache {
    enabled: bool,
    /// Blocks in each stage's KV pool.
    pool_blocks: usize,
    kept: HashMap<BlockHash, Kept>,
    /// Blocks on every stage's disk (when the stages keep them there), with
    /// their last use.
    on_disk: Option<HashMap<BlockHash, u64>>,
    /// State snapshots (recurrent state, sliding-window rings): a prompt
    /// resumes only at the end of a prefix the stages hold one for.
    snapshots: Option<SnapshotIndex>,
    /// State snapshots on every stage's disk (with `on_disk`).
    disk_snapshots: HashSet<BlockHash>,
    clock: u64,
}

/// Most on-disk blocks the index remembers (16 MiB of hashes): past it,
/// the least recently used are forgotten.
const MAX_ON_DISK: usize = 1 << 20;

/// The cached blocks a prompt starts with.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Attached {
    pub blocks: Vec<BlockHash>,
    /// How many of the last `blocks` must be read back from disk.
    pub restore: usize,
    /// The state snapshot after `blocks` is read back from disk (a model
    /// that resumes from snapshots), not one the stages hold in memory.
    pub snapshot_from_disk: bool,
}

impl PrefixCache {
    /// `enabled` is false where the stages cannot reuse blocks (recurrent
    /// state, sliding-window rings) or the user turned it off.
    pub fn new(enabled: bool, pool_blocks: usize) -> Self {
        PrefixCache {
            enabled,
            pool_blocks,
            kept: HashMap::new(),
            on_disk: None,
            snapshots: None,
            disk_snapshots: HashSet::new(),
            clock: 0,
        }
    }

    /// For a model with recurrent state or sliding-window rings: a prompt
    /// resumes only where the stages hold a state snapshot, `capacity` of
    /// them each.
    pub fn with_snapshots(mut self, capacity: usize) -> Self {
        self.snapshots = Some(SnapshotIndex::new(capacity));
        self
    }

    /// Where the prompt `prompt` of a model that resumes from snapshots
    /// (recurrent state, sliding-window rings), computed from `cached`,
    /// should stop once to save a state snapshot: its last whole block
    /// before its last token and within its first `stable` tokens (those
    /// a later prompt computes in the same attention orders), the most of
    /// it the next turn can reuse.
    pub fn snapshot_point(&self, prompt: &[u32], cached: usize, stable: usize) -> Option<usize> {
        let at = prompt.len().saturating_sub(1).min(stable) / KV_BLOCK_TOKENS * KV_BLOCK_TOKENS;
        (self.enabled && self.snapshots.is_some() && at > cached).then_some(at)
    }

    /// The hash a frame saves a snapshot of `prefix` (whole blocks) under,
    /// and the snapshots it drops first; `None`: save none.
    pub fn save_snapshot(
        &mut self,
        prefix: &[u32],
        orders: &[RowOrder],
    ) -> Option<(BlockHash, Vec<BlockHash>)> {
        let hash = *block_hashes(prefix, orders).last()?;
        let now = self.tick();
        let dropped = self.snapshots.as_mut()?.save(hash, now)?;
        self.dropped_to_disk(&dropped);
        Some((hash, dropped))
    }

    /// Snapshots the stages drop from memory: where they keep a disk, it
    /// still holds them (written when saved).
    fn dropped_to_disk(&mut self, hashes: &[BlockHash]) {
        if self.on_disk.is_some() {
            self.disk_snapshots.extend(hashes);
        }
    }

    /// The first frame of a prompt started on `prefix` is built: its
    /// snapshot may be dropped from the next frame on.
    pub fn resumed(&mut self, prefix: &[BlockHash]) {
        if let (Some(s), Some(h)) = (self.snapshots.as_mut(), prefix.last()) {
            s.release(h);
        }
    }

    /// Snapshots a failed frame saved: no stage may hold them. Returns
    /// those the index held.
    pub fn forget_snapshots(&mut self, hashes: &[BlockHash]) -> Vec<BlockHash> {
        self.snapshots
            .as_mut()
            .map_or_else(Vec::new, |s| s.forget(hashes))
    }

    /// The stages keep blocks on disk (`Some`, with the blocks and state
    /// snapshots they hold now) or not (`None`), as a new pipeline's stages
    /// said.
    pub fn set_on_disk(&mut self, held: Option<(Vec<BlockHash>, Vec<BlockHash>)>) {
        let now = self.tick();
        let (blocks, snapshots) = held.unzip();
        self.on_disk = blocks.map(|h| h.into_iter().map(|h| (h, now)).collect());
        self.disk_snapshots = snapshots.into_iter().flatten().collect();
    }

    /// A state snapshot a stage could not read back from disk.
    pub fn forget_disk_snapshot(&mut self, hash: &BlockHash) {
        self.disk_snapshots.remove(hash);
    }

    /// Blocks the stages can read back from disk.
    pub fn on_disk_len(&self) -> usize {
        self.on_disk.as_ref().map_or(0, |d| d.len())
    }

    /// Blocks a stage could not read back: no prompt attaches them again.
    pub fn forget(&mut self, hashes: &[BlockHash]) {
        self.forget_snapshots(hashes);
        for h in hashes {
            self.disk_snapshots.remove(h);
            self.kept.remove(h);
            if let Some(d) = self.on_disk.as_mut() {
                d.remove(h);
            }
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Blocks kept now.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The cached blocks `prompt` starts with, longest first match, leaving
    /// at least its last token to compute (its logits are needed): kept
    /// ones, then those on disk; for a recurrent model, only up to the
    /// deepest of them with a state snapshot (in memory, else on disk).
    /// Each is marked in use until
    /// [`Self::detach`]; those on disk count as kept from now on (the
    /// first frame reads them into the stages' memory).
    pub fn attach(&mut self, prompt: &[u32], orders: &[RowOrder]) -> Attached {
        let mut out = Attached::default();
        if !self.enabled || prompt.len() <= KV_BLOCK_TOKENS {
            return out;
        }
        let usable = (prompt.len() - 1) / KV_BLOCK_TOKENS * KV_BLOCK_TOKENS;
        let mut hashes = block_hashes(&prompt[..usable], &orders[..usable]);
        let cached = |h: &BlockHash| {
            self.kept.contains_key(h) || self.on_disk.as_ref().is_some_and(|d| d.contains_key(h))
        };
        let mut n = hashes.iter().take_while(|h| cached(h)).count();
        let now = self.tick();
        if let Some(s) = self.snapshots.as_mut() {
            let on_disk = &self.disk_snapshots;
            n = (0..n)
                .rev()
                .find(|&i| s.has(&hashes[i]) || on_disk.contains(&hashes[i]))
                .map_or(0, |i| i + 1);
            if n > 0 {
                if s.has(&hashes[n - 1]) {
                    s.reserve(&hashes[n - 1], now);
                } else {
                    out.snapshot_from_disk = true;
                }
            }
        }
        hashes.truncate(n);
        for (depth, h) in hashes.into_iter().enumerate() {
            if let Some(k) = self.kept.get_mut(&h) {
                k.users += 1;
                k.last_used = now;
                if out.restore > 0 {
                    out.restore += 1;
                }
            } else {
                // On disk (`cached` above).
                self.kept.insert(
                    h,
                    Kept {
                        users: 1,
                        last_used: now,
                        depth,
                    },
                );
                out.restore += 1;
            }
            out.blocks.push(h);
        }
        out
    }

    /// A sequence started on `prefix` has ended.
    pub fn detach(&mut self, prefix: &[BlockHash]) {
        for h in prefix {
            if let Some(k) = self.kept.get_mut(h) {
                k.users = k.users.saturating_sub(1);
            }
        }
    }

    /// A sequence that held `tokens` in the stages' KV (and started on
    /// `prefix`) has ended well: its full blocks are kept. Returns their
    /// hashes, for the stages (which keep a block whose hash is new, and
    /// free one whose hash is kept already).
    pub fn retain(
        &mut self,
        tokens: &[u32],
        orders: &[RowOrder],
        prefix: &[BlockHash],
    ) -> Vec<BlockHash> {
        self.detach(prefix);
        if !self.enabled {
            return Vec::new();
        }
        let hashes = block_hashes(tokens, orders);
        let now = self.tick();
        for (depth, h) in hashes.iter().enumerate() {
            self.kept
                .entry(*h)
                .and_modify(|k| k.last_used = now)
                .or_insert(Kept {
                    users: 0,
                    last_used: now,
                    depth,
                });
        }
        hashes
    }

    /// Least recently used kept blocks no live sequence uses, freed so that
    /// `needed` more blocks fit beside `live` blocks the sequences hold.
    /// Returns their hashes, for the stages.
    pub fn make_room(&mut self, live: usize, needed: usize) -> Vec<BlockHash> {
        let used = live + self.kept.len();
        let short = (used + needed).saturating_sub(self.pool_blocks);
        if short == 0 {
            return Vec::new();
        }
        let mut idle: Vec<(u64, std::cmp::Reverse<usize>, BlockHash)> = self
            .kept
            .iter()
            .filter(|(_, k)| k.users == 0)
            .map(|(h, k)| (k.last_used, std::cmp::Reverse(k.depth), *h))
            .collect();
        idle.sort_unstable();
        let out: Vec<BlockHash> = idle.into_iter().take(short).map(|(_, _, h)| h).collect();
        // Their snapshots go with them from memory (the stages drop them).
        let in_memory = self.forget_snapshots(&out);
        self.dropped_to_disk(&in_memory);
        for h in &out {
            let k = self.kept.remove(h).expect("an idle kept block");
            // The stages saved it when they kept it.
            if let Some(d) = self.on_disk.as_mut() {
                d.insert(*h, k.last_used);
            }
        }
        self.bound_on_disk();
        out
    }

    /// Forgets the least recently used on-disk blocks past [`MAX_ON_DISK`].
    fn bound_on_disk(&mut self) {
        let Some(d) = self.on_disk.as_mut() else {
            return;
        };
        if d.len() <= MAX_ON_DISK {
            return;
        }
        let mut by_age: Vec<(u64, BlockHash)> = d.iter().map(|(h, t)| (*t, *h)).collect();
        by_age.sort_unstable();
        for (_, h) in by_age.into_iter().take(d.len() - MAX_ON_DISK * 9 / 10) {
            d.remove(&h);
        }
        // A snapshot resumes nothing without its blocks.
        let kept = &self.kept;
        self.disk_snapshots
            .retain(|h| d.contains_key(h) || kept.contains_key(h));
    }

    /// The stages' caches were dropped (a new pipeline, whose stages say
    /// again what they hold on disk).
    pub fn clear(&mut self) {
        self.kept.clear();
        if let Some(s) = self.snapshots.as_mut() {
            s.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row in the one-chunk order.
    fn plain(tokens: &[u32]) -> Vec<RowOrder> {
        vec![RowOrder::OneChunk; tokens.len()]
    }

    fn tokens(n: usize, salt: u32) -> Vec<u32> {
        (0..n as u32).map(|i| i * 7 + salt).collect()
    }

    #[test]
    fn hashes_chain_over_whole_blocks() {
        let a = tokens(100, 0);
        let h = block_hashes(&a, &plain(&a));
        assert_eq!(h.len(), 3);
        assert_eq!(block_hashes(&a[..64], &plain(&a[..64])), h[..2]);
        // Same second block after a different first: a different hash.
        let mut b = a.clone();
        b[0] += 1;
        let hb = block_hashes(&b, &plain(&b));
        assert!(hb[0] != h[0] && hb[1] != h[1]);
    }

    #[test]
    fn attach_takes_the_longest_kept_prefix_and_leaves_a_token() {
        let mut c = PrefixCache::new(true, 100);
        let history = tokens(96, 1);
        assert_eq!(c.retain(&history, &plain(&history), &[]).len(), 3);
        // The same 96 tokens again: two blocks, the last token's block is computed.
        assert_eq!(c.attach(&history, &plain(&history)).blocks.len(), 2);
        // 97 tokens: all three blocks.
        let mut longer = history.clone();
        longer.push(5);
        assert_eq!(c.attach(&longer, &plain(&longer)).blocks.len(), 3);
        // A prompt that differs in block 1 matches block 0 only.
        let mut other = longer.clone();
        other[40] += 1;
        assert_eq!(c.attach(&other, &plain(&other)).blocks.len(), 1);
        assert!(PrefixCache::new(false, 100)
            .attach(&longer, &plain(&longer))
            .blocks
            .is_empty());
    }

    #[test]
    fn a_block_is_reused_only_in_the_orders_it_was_computed_in() {
        let mut c = PrefixCache::new(true, 100);
        let a = tokens(97, 1);
        // Kept from a run that computed its rows 64.. in the one-chunk
        // order (a short last ubatch, or decode steps)...
        let mut first = vec![RowOrder::Tiled; 64];
        first.resize(97, RowOrder::OneChunk);
        c.retain(&a, &first, &[]);
        // ...reused where a prompt computes them alike...
        assert_eq!(c.attach(&a, &first).blocks.len(), 3);
        // ...but only up to the block where a longer prompt tiles them.
        let tiled = vec![RowOrder::Tiled; 97];
        assert_eq!(c.attach(&a, &tiled).blocks.len(), 2);
        assert_eq!(c.attach(&a, &plain(&a)).blocks.len(), 0);
    }

    #[test]
    fn make_room_evicts_least_recently_used_idle_blocks() {
        let mut c = PrefixCache::new(true, 6);
        let (a, b) = (tokens(64, 1), tokens(64, 2));
        c.retain(&a, &plain(&a), &[]);
        c.retain(&b, &plain(&b), &[]);
        assert_eq!(c.kept.len(), 4);
        let used = c
            .attach(
                &[a.clone(), vec![9]].concat(),
                &plain(&[a.clone(), vec![9]].concat()),
            )
            .blocks;
        assert_eq!(used.len(), 2);
        // 6 blocks: 4 kept + 1 live; 3 more needed evicts 2, b's (a's are
        // in use), its last block first.
        let evicted = c.make_room(1, 3);
        let mut b_blocks = block_hashes(&b, &plain(&b));
        b_blocks.reverse();
        assert_eq!(evicted, b_blocks);
        assert_eq!(c.kept.len(), 2);
        assert!(c.make_room(1, 3).is_empty(), "exactly full");
        // In use: never evicted, however short the pool.
        assert!(c.make_room(4, 10).is_empty());
        c.detach(&used);
        assert_eq!(c.make_room(4, 10).len(), 2);
        assert!(c.is_empty());
    }

    #[test]
    fn evicted_blocks_stay_on_disk_and_attach_to_be_restored() {
        let mut c = PrefixCache::new(true, 4);
        c.set_on_disk(Some(Default::default()));
        let a = tokens(96, 1);
        c.retain(&a, &plain(&a), &[]);
        // 3 kept of 4: room for 2 more evicts the deepest, which stays on
        // disk.
        assert_eq!(c.make_room(0, 2).len(), 1);
        assert_eq!((c.len(), c.on_disk_len()), (2, 1));
        let mut prompt = a.clone();
        prompt.push(1);
        let got = c.attach(&prompt, &plain(&prompt));
        assert_eq!(got.blocks, block_hashes(&a, &plain(&a)));
        assert_eq!(got.restore, 1, "the evicted last block is read back");
        assert_eq!(c.len(), 3, "counted as kept while it is restored");
        // A stage could not read it: forgotten, on disk too.
        c.forget(&got.blocks[2..]);
        c.detach(&got.blocks[..2]);
        assert_eq!(c.attach(&prompt, &plain(&prompt)).restore, 0);
        assert_eq!(c.on_disk_len(), 0);
        // A pipeline whose stages keep nothing on disk.
        c.set_on_disk(None);
        c.make_room(0, 4);
        assert_eq!(c.on_disk_len(), 0);
    }

    #[test]
    fn a_new_pipeline_starts_from_what_its_stages_list() {
        let mut c = PrefixCache::new(true, 8);
        let a = tokens(64, 3);
        c.set_on_disk(Some((block_hashes(&a, &plain(&a)), Vec::new())));
        let mut prompt = a.clone();
        prompt.push(0);
        let got = c.attach(&prompt, &plain(&prompt));
        assert_eq!((got.blocks.len(), got.restore), (2, 2));
        // Only the first block listed: the chain stops at the gap.
        let mut c = PrefixCache::new(true, 8);
        c.set_on_disk(Some((
            block_hashes(&a, &plain(&a))[..1].to_vec(),
            Vec::new(),
        )));
        assert_eq!(c.attach(&prompt, &plain(&prompt)).blocks.len(), 1);
    }

    #[test]
    fn snapshots_on_disk_resume_after_a_restart_and_after_leaving_memory() {
        let a = tokens(128, 5);
        let h = block_hashes(&a, &plain(&a));
        let mut prompt = a.clone();
        prompt.push(0);
        // After a restart: blocks 0..4 and the snapshots after blocks 1
        // and 2 on disk. The deepest snapshot decides.
        let mut c = PrefixCache::new(true, 16).with_snapshots(2);
        c.set_on_disk(Some((h.clone(), vec![h[1], h[2]])));
        let got = c.attach(&prompt, &plain(&prompt));
        assert_eq!(
            (got.blocks.len(), got.restore, got.snapshot_from_disk),
            (3, 3, true)
        );
        // A stage could not read that snapshot: the next deepest.
        c.forget_disk_snapshot(&h[2]);
        c.detach(&got.blocks);
        let got = c.attach(&prompt, &plain(&prompt));
        assert_eq!((got.blocks.len(), got.snapshot_from_disk), (2, true));
        c.detach(&got.blocks);

        // In one run: a snapshot dropped from memory is still on disk.
        let mut c = PrefixCache::new(true, 16).with_snapshots(1);
        c.set_on_disk(Some(Default::default()));
        c.retain(&a, &plain(&a), &[]);
        let (saved, dropped) = c.save_snapshot(&a[..64], &plain(&a[..64])).unwrap();
        assert_eq!((saved, dropped), (h[1], vec![]));
        let got = c.attach(&prompt, &plain(&prompt));
        assert_eq!(
            (got.blocks.len(), got.restore, got.snapshot_from_disk),
            (2, 0, false)
        );
        c.resumed(&got.blocks);
        c.detach(&got.blocks);
        // Saving another drops it from memory (one row), not from disk.
        let (_, dropped) = c.save_snapshot(&a[..96], &plain(&a[..96])).unwrap();
        assert_eq!(dropped, vec![h[1]]);
        c.forget_snapshots(&[h[2]]);
        let got = c.attach(&prompt, &plain(&prompt));
        assert_eq!((got.blocks.len(), got.snapshot_from_disk), (2, true));
        // Without disks, a dropped snapshot is gone.
        let mut c = PrefixCache::new(true, 16).with_snapshots(1);
        c.retain(&a, &plain(&a), &[]);
        c.save_snapshot(&a[..64], &plain(&a[..64])).unwrap();
        c.save_snapshot(&a[..96], &plain(&a[..96])).unwrap();
        c.forget_snapshots(&[h[2]]);
        assert!(c.attach(&prompt, &plain(&prompt)).blocks.is_empty());
    }
}
