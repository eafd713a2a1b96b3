//! Sessions on disk for one loaded stage: kept KV blocks and state
//! snapshots are written to the worker's KV cache directory (off the
//! compute thread, by a writer thread with a bounded queue: when it is
//! full, a block is not saved rather than the stage waiting), and read back
//! when a prefix restored from disk starts a sequence.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};

use strata_kernels::{Backend, KvBlockId};
use strata_model::profile::KvType;

use strata_proto::v1;

use crate::kv_blocks::BlockHash;
use crate::kv_disk::{DiskBlocks, FileKind, Shape};
use crate::stage::{LayerBlock, Stage};

/// `--kv-cache-dir` and `--kv-cache-size`.
#[derive(Debug, Clone)]
pub struct KvDiskConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

/// Layer blocks waiting to be written (about 25 KiB to 130 KiB each; a
/// layer's state snapshot is megabytes).
const QUEUE: usize = 4096;
/// Bytes waiting to be written, at most: past it, nothing more is copied
/// to the host to be saved (a slow disk costs files, not memory).
const QUEUE_BYTES: u64 = 256 << 20;

pub struct KvSessions {
    blocks: Arc<Mutex<DiskBlocks>>,
    writes: mpsc::SyncSender<(FileKind, BlockHash, LayerBlock)>,
    /// Bytes queued and not written yet.
    queued: Arc<AtomicU64>,
}

impl KvSessions {
    /// Opens the folder for one model and KV type under the configured
    /// directory (blocks of another model or type are never read), for the
    /// files of `layers`.
    pub fn open(
        config: &KvDiskConfig,
        digest: &str,
        kv_type: KvType,
        layers: &[usize],
    ) -> std::io::Result<Self> {
        let dir = config
            .dir
            .join(crate::kv_disk::digest_folder(digest))
            .join(kv_type.name());
        let blocks = Arc::new(Mutex::new(DiskBlocks::open(
            &dir,
            layers,
            config.max_bytes,
        )?));
        let (writes, queue) = mpsc::sync_channel::<(FileKind, BlockHash, LayerBlock)>(QUEUE);
        let (writer, queued) = (blocks.clone(), Arc::new(AtomicU64::new(0)));
        let written = queued.clone();
        std::thread::Builder::new()
            .name("strata-kv-disk".into())
            .spawn(move || {
                for (kind, hash, b) in queue {
                    let mut d = writer.lock().unwrap_or_else(|p| p.into_inner());
                    if let Err(e) = d.write(kind, b.layer, b.shape, &hash, &b.bytes) {
                        tracing::warn!("saving a KV cache file of layer {}: {e}", b.layer);
                    }
                    written.fetch_sub(b.bytes.len() as u64, Relaxed);
                }
            })?;
        tracing::info!(
            "KV blocks kept on disk in {} (at most {} MiB)",
            dir.display(),
            config.max_bytes >> 20
        );
        Ok(KvSessions {
            blocks,
            writes,
            queued,
        })
    }

    fn disk(&self) -> std::sync::MutexGuard<'_, DiskBlocks> {
        self.blocks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the queue has room for more (else a save is skipped before
    /// anything is copied to the host).
    fn has_room(&self) -> bool {
        let room = self.queued.load(Relaxed) < QUEUE_BYTES;
        if !room {
            tracing::debug!("KV disk queue full: a kept block or snapshot is not saved");
        }
        room
    }

    /// Queues the newly kept blocks of `stage` for writing.
    pub fn save<B: Backend>(&self, stage: &Stage<B>, kept: &[(BlockHash, KvBlockId)]) {
        self.save_each(FileKind::Block, kept, |&block| stage.block_to_host(block));
    }

    /// Queues the state snapshots `stage` newly saved (hash and row).
    pub fn save_snapshots<B: Backend>(&self, stage: &Stage<B>, saved: &[(BlockHash, u32)]) {
        self.save_each(FileKind::State, saved, |&row| stage.snapshot_to_host(row));
    }

    /// Copies each item to the host with `to_host` and queues its layers,
    /// while the queue has room.
    fn save_each<T>(
        &self,
        kind: FileKind,
        items: &[(BlockHash, T)],
        to_host: impl Fn(&T) -> Result<Vec<LayerBlock>, strata_kernels::KernelError>,
    ) {
        for (hash, item) in items {
            if !self.has_room() {
                return;
            }
            match to_host(item) {
                Ok(layers) => self.queue(kind, *hash, layers),
                Err(e) => tracing::warn!("reading a KV cache {kind:?} to save it: {e}"),
            }
        }
    }

    fn queue(&self, kind: FileKind, hash: BlockHash, layers: Vec<LayerBlock>) {
        for b in layers {
            let len = b.bytes.len() as u64;
            self.queued.fetch_add(len, Relaxed);
            if self.writes.try_send((kind, hash, b)).is_err() {
                self.queued.fetch_sub(len, Relaxed);
                tracing::debug!("KV disk queue full: a kept block or snapshot is not saved");
                return;
            }
        }
    }

    /// The block (or snapshot) saved for `layer`, checked against its
    /// header.
    pub fn read(
        &self,
        kind: FileKind,
        layer: usize,
        shape: Shape,
        hash: &BlockHash,
    ) -> Option<Vec<u8>> {
        self.disk().read(kind, layer, shape, hash)
    }

    /// The hashes saved for every one of `layers` (`None` when there are no
    /// such layers: they constrain nothing).
    pub fn prefixes(&self, kind: FileKind, layers: &[usize]) -> Option<HashSet<BlockHash>> {
        let d = self.disk();
        let mut sets = layers.iter().map(|&l| d.hashes(kind, l));
        let first = sets.next()?;
        Some(sets.fold(first, |acc, s| acc.intersection(&s).copied().collect()))
    }
}

/// One list of a `DiskPrefixesReply`: `None` where no stage has such
/// layers (it constrains nothing), else the hashes.
type HashList = Option<Vec<Vec<u8>>>;

fn reply(blocks: HashList, states: HashList) -> v1::DiskPrefixesReply {
    v1::DiskPrefixesReply {
        enabled: true,
        has_blocks: blocks.is_some(),
        block_hashes: blocks.unwrap_or_default(),
        has_state: states.is_some(),
        snapshot_hashes: states.unwrap_or_default(),
    }
}

/// What one stage holds on disk, as a reply of its own: the blocks of all
/// its KV layers, and the snapshots of all its state layers.
pub fn own_prefixes<B: Backend>(disk: &KvSessions, stage: &Stage<B>) -> v1::DiskPrefixesReply {
    let list = |kind, layers: &[usize]| {
        let set = disk.prefixes(kind, layers)?;
        Some(set.into_iter().map(|h| h.to_vec()).collect())
    };
    reply(
        list(FileKind::Block, &stage.kv_layer_indices()),
        list(FileKind::State, &stage.state_layer_indices()),
    )
}

/// `own` narrowed to what the stages after it hold too (`after`, their
/// joined reply): a list constrains only where some stage has such layers.
pub fn join_prefixes(
    own: v1::DiskPrefixesReply,
    after: v1::DiskPrefixesReply,
) -> v1::DiskPrefixesReply {
    if !own.enabled || !after.enabled {
        return v1::DiskPrefixesReply::default();
    }
    let join = |a: HashList, b: HashList| match (a, b) {
        (Some(a), Some(b)) => {
            let b: HashSet<Vec<u8>> = b.into_iter().collect();
            Some(a.into_iter().filter(|h| b.contains(h)).collect())
        }
        (a, b) => a.or(b),
    };
    let listed = |has: bool, l: Vec<Vec<u8>>| has.then_some(l);
    reply(
        join(
            listed(own.has_blocks, own.block_hashes),
            listed(after.has_blocks, after.block_hashes),
        ),
        join(
            listed(own.has_state, own.snapshot_hashes),
            listed(after.has_state, after.snapshot_hashes),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(blocks: Option<&[u8]>, states: Option<&[u8]>) -> v1::DiskPrefixesReply {
        let list = |l: Option<&[u8]>| l.map(|l| l.iter().map(|&b| vec![b; 16]).collect());
        super::reply(list(blocks), list(states))
    }

    #[test]
    fn stages_without_such_layers_constrain_nothing() {
        // A DeltaNet-only stage before one with attention and no state.
        let j = join_prefixes(reply(None, Some(&[1, 2])), reply(Some(&[3]), None));
        assert_eq!(j, reply(Some(&[3]), Some(&[1, 2])));
        // Both with blocks and state: what both hold.
        let j = join_prefixes(
            reply(Some(&[1, 2, 3]), Some(&[2])),
            reply(Some(&[2, 3]), Some(&[2, 3])),
        );
        assert_eq!(j, reply(Some(&[2, 3]), Some(&[2])));
        // A stage after without a KV cache directory: nothing.
        let j = join_prefixes(reply(Some(&[1]), None), v1::DiskPrefixesReply::default());
        assert!(!j.enabled && j.block_hashes.is_empty());
    }
}
