//! Sessions on disk for one loaded stage: kept KV blocks are written to the
//! worker's KV cache directory (off the compute thread, by a writer thread
//! with a bounded queue: when it is full, a block is not saved rather than
//! the stage waiting), and read back when a prefix restored from disk
//! starts a sequence.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};

use strata_kernels::{Backend, KvBlockId, KvGeometry};
use strata_model::profile::KvType;

use crate::kv_blocks::BlockHash;
use crate::kv_disk::DiskBlocks;
use crate::stage::{LayerBlock, Stage};

/// `--kv-cache-dir` and `--kv-cache-size`.
#[derive(Debug, Clone)]
pub struct KvDiskConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

/// Layer blocks waiting to be written (about 25 KiB to 130 KiB each).
const QUEUE: usize = 4096;

pub struct KvSessions {
    blocks: Arc<Mutex<DiskBlocks>>,
    writes: mpsc::SyncSender<(BlockHash, LayerBlock)>,
}

impl KvSessions {
    /// Opens the folder for one model and KV type under the configured
    /// directory (blocks of another model or type are never read).
    pub fn open(config: &KvDiskConfig, digest: &str, kv_type: KvType) -> std::io::Result<Self> {
        let dir = config
            .dir
            .join(digest.replace(':', "-"))
            .join(kv_type.name());
        let blocks = Arc::new(Mutex::new(DiskBlocks::open(&dir, config.max_bytes)?));
        let (writes, queue) = mpsc::sync_channel::<(BlockHash, LayerBlock)>(QUEUE);
        let writer = blocks.clone();
        std::thread::Builder::new()
            .name("strata-kv-disk".into())
            .spawn(move || {
                for (hash, b) in queue {
                    let mut d = writer.lock().unwrap_or_else(|p| p.into_inner());
                    if let Err(e) = d.write(b.layer, &b.geometry, &hash, &b.bytes) {
                        tracing::warn!("saving a KV block of layer {}: {e}", b.layer);
                    }
                }
            })?;
        tracing::info!(
            "KV blocks kept on disk in {} (at most {} MiB)",
            dir.display(),
            config.max_bytes >> 20
        );
        Ok(KvSessions { blocks, writes })
    }

    fn disk(&self) -> std::sync::MutexGuard<'_, DiskBlocks> {
        self.blocks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues the newly kept blocks of `stage` for writing.
    pub fn save<B: Backend>(&self, stage: &Stage<B>, kept: &[(BlockHash, KvBlockId)]) {
        for &(hash, block) in kept {
            let layers = match stage.block_to_host(block) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("reading a kept KV block to save it: {e}");
                    continue;
                }
            };
            for b in layers {
                if self.writes.try_send((hash, b)).is_err() {
                    tracing::debug!("KV disk queue full: a kept block is not saved");
                    return;
                }
            }
        }
    }

    /// The block saved for `layer`, checked against its header.
    pub fn read(&self, layer: usize, geometry: &KvGeometry, hash: &BlockHash) -> Option<Vec<u8>> {
        self.disk().read(layer, geometry, hash)
    }

    /// The hashes saved for every one of `layers`.
    pub fn prefixes(&self, layers: &[usize]) -> HashSet<BlockHash> {
        let d = self.disk();
        let mut sets = layers.iter().map(|&l| d.hashes(l));
        let Some(first) = sets.next() else {
            return HashSet::new();
        };
        sets.fold(first, |acc, s| acc.intersection(&s).copied().collect())
    }
}
