//! A stage's kept KV blocks as bytes, per layer, for sessions on disk: what
//! to write when a block is kept, and reading one back into a free block.

use strata_kernels::{Backend, KernelError, KvBlockId, KvGeometry};

use super::{Stage, StageError};
use crate::kv_blocks::BlockHash;

/// One layer's share of a kept block: the model's layer index (so that
/// another placement finds it), its KV row shape and the bytes.
pub struct LayerBlock {
    pub layer: usize,
    pub geometry: KvGeometry,
    pub bytes: Vec<u8>,
}

impl<B: Backend> Stage<B> {
    /// The layers that hold their own KV (not one that reads another
    /// layer's), with their model index, pool and place in it.
    fn kv_owners(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        self.layers.iter().enumerate().filter_map(|(li, l)| {
            let a = l.attention()?;
            if a.spec().kv_source.is_some() {
                return None;
            }
            let slot = self.kv_layer[li]?;
            Some((self.range.first + li, slot.pool, slot.layer))
        })
    }

    /// The model's layers whose KV this stage keeps (the files it reads).
    pub fn kv_layer_indices(&self) -> Vec<usize> {
        self.kv_owners().map(|(il, _, _)| il).collect()
    }

    /// Block `block` of every KV layer, as the cache stores it.
    pub fn block_to_host(&self, block: KvBlockId) -> Result<Vec<LayerBlock>, KernelError> {
        self.kv_owners()
            .map(|(layer, pool, at)| {
                let p = &self.kv[pool];
                Ok(LayerBlock {
                    layer,
                    geometry: p.geometry,
                    bytes: self.backend.kv_block_to_host(&p.cache, at, block)?,
                })
            })
            .collect()
    }

    /// Keeps `hash` in a free block filled from `read` (each layer's bytes
    /// for its model index and row shape), for sequence `seq`'s prefix.
    /// Nothing changes when a layer's bytes are missing or do not fit.
    pub fn restore_block(
        &mut self,
        seq: u64,
        hash: BlockHash,
        read: &mut dyn FnMut(usize, &KvGeometry) -> Option<Vec<u8>>,
    ) -> Result<(), StageError> {
        if self.blocks.is_kept(&hash) {
            return Ok(());
        }
        let block = self.blocks.keep_free(seq, hash)?;
        let owners: Vec<_> = self.kv_owners().collect();
        for (layer, pool, at) in owners {
            let p = &mut self.kv[pool];
            let result = match read(layer, &p.geometry) {
                Some(bytes) => self
                    .backend
                    .kv_block_from_host(&mut p.cache, at, block, &bytes)
                    .map_err(StageError::from),
                None => Err(StageError::Batch(format!(
                    "sequence {seq}: prefix block of layer {layer} is not on disk"
                ))),
            };
            if let Err(e) = result {
                self.blocks.evict(&[hash]);
                return Err(e);
            }
        }
        Ok(())
    }
}
