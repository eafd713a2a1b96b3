//! A stage's kept KV blocks and state snapshots as bytes, per layer, for
//! sessions on disk: what to write when a block is kept or a snapshot
//! saved, and reading them back.

use strata_kernels::{Backend, KernelError, KvBlockId};

use super::{Stage, StageError};
use crate::kv_blocks::BlockHash;
use crate::kv_disk::{block_shape, Shape};

/// One layer's share of a kept block (or of a snapshot): the model's layer
/// index (so that another placement finds it), the shape of its bytes and
/// the bytes.
pub struct LayerBlock {
    pub layer: usize,
    pub shape: Shape,
    pub bytes: Vec<u8>,
}

/// Reads one layer's bytes saved for a block or snapshot, by the model's
/// layer index and the shape they must have (`None`: not on disk).
pub type ReadLayer<'a> = &'a mut dyn FnMut(usize, Shape) -> Option<Vec<u8>>;

/// What a recurrent layer's snapshot file holds: its conv row then its
/// delta-rule row (f32). The first number keeps it apart from a KV shape.
fn recurrent_shape(conv: usize, ssm: usize) -> Shape {
    [u32::MAX, conv as u32, ssm as u32, 0]
}

impl<B: Backend> Stage<B> {
    /// The layers that hold their own KV in full blocks (not one that reads
    /// another layer's, nor a sliding-window ring), with their model index,
    /// pool and place in it.
    fn block_owners(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        self.kv_owners()
            .filter(|&(_, pool, _)| self.kv[pool].rings.is_none())
    }

    /// [`Self::block_owners`] and the sliding-window layers.
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

    /// The DeltaNet layers' model indices, in `self.recurrent`'s order.
    fn recurrent_layers(&self) -> Vec<usize> {
        (self.layers.iter().enumerate())
            .filter(|(_, l)| l.delta_net().is_some())
            .map(|(li, _)| self.range.first + li)
            .collect()
    }

    /// The sliding-window layers that keep a ring, with pool and place.
    fn ring_layers(&self) -> Vec<(usize, usize, usize)> {
        self.kv_owners()
            .filter(|&(_, pool, _)| self.kv[pool].rings.is_some())
            .collect()
    }

    /// The model's layers whose KV blocks this stage keeps (the files it
    /// reads).
    pub fn kv_layer_indices(&self) -> Vec<usize> {
        self.block_owners().map(|(il, _, _)| il).collect()
    }

    /// The model's layers whose state a snapshot holds (recurrent layers,
    /// sliding-window rings).
    pub fn state_layer_indices(&self) -> Vec<usize> {
        let mut out = self.recurrent_layers();
        out.extend(self.ring_layers().into_iter().map(|(il, _, _)| il));
        out
    }

    /// Block `block` of every KV layer, as the cache stores it.
    pub fn block_to_host(&self, block: KvBlockId) -> Result<Vec<LayerBlock>, KernelError> {
        self.block_owners()
            .map(|(layer, pool, at)| {
                let p = &self.kv[pool];
                Ok(LayerBlock {
                    layer,
                    shape: block_shape(&p.geometry),
                    bytes: self.backend.kv_block_to_host(&p.cache, at, block)?,
                })
            })
            .collect()
    }

    /// Keeps `hash` in a free block filled from `read`, for sequence
    /// `seq`'s prefix. Nothing changes when a layer's bytes are missing or
    /// do not fit.
    pub fn restore_block(
        &mut self,
        seq: u64,
        hash: BlockHash,
        read: ReadLayer<'_>,
    ) -> Result<(), StageError> {
        if self.blocks.is_kept(&hash) {
            return Ok(());
        }
        let block = self.blocks.keep_free(seq, hash)?;
        let owners: Vec<_> = self.block_owners().collect();
        for (layer, pool, at) in owners {
            let p = &mut self.kv[pool];
            let result = match read(layer, block_shape(&p.geometry)) {
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

    /// Snapshot `row` of every state layer (recurrent rows, rings), as
    /// bytes to write.
    pub fn snapshot_to_host(&self, row: u32) -> Result<Vec<LayerBlock>, KernelError> {
        let b = &self.backend;
        let mut out = Vec::new();
        for (layer, st) in self.recurrent_layers().into_iter().zip(&self.recurrent) {
            let (conv, ssm) = (b.row_to_host(&st.conv, row)?, b.row_to_host(&st.ssm, row)?);
            let shape = recurrent_shape(conv.len(), ssm.len());
            let mut bytes = bytemuck::cast_slice::<f32, u8>(&conv).to_vec();
            bytes.extend_from_slice(bytemuck::cast_slice(&ssm));
            out.push(LayerBlock {
                layer,
                shape,
                bytes,
            });
        }
        for (layer, pool, at) in self.ring_layers() {
            let p = &self.kv[pool];
            let rings = p.rings.as_ref().expect("a ring pool");
            let mut bytes = Vec::new();
            for block in rings.ring_blocks(row) {
                bytes.extend(b.kv_block_to_host(&p.cache, at, block)?);
            }
            out.push(LayerBlock {
                layer,
                shape: block_shape(&p.geometry),
                bytes,
            });
        }
        Ok(out)
    }

    /// Gives the new sequence `seq` a state slot and rings holding the
    /// snapshot `read` gives (one written by [`Self::snapshot_to_host`]).
    pub(super) fn resume_from_disk(
        &mut self,
        seq: u64,
        read: ReadLayer<'_>,
    ) -> Result<(), StageError> {
        let missing = |layer: usize| {
            StageError::Batch(format!(
                "sequence {seq}: the state snapshot of layer {layer} is not on disk"
            ))
        };
        if !self.recurrent.is_empty() {
            let slot = self.slots.hold(seq).map_err(StageError::Batch)?;
            for (layer, st) in self.recurrent_layers().into_iter().zip(&mut self.recurrent) {
                let conv_len = self.backend.act_shape(&st.conv).1;
                let ssm_len = self.backend.act_shape(&st.ssm).1;
                let bytes = read(layer, recurrent_shape(conv_len, ssm_len))
                    .filter(|b| b.len() == 4 * (conv_len + ssm_len))
                    .ok_or_else(|| missing(layer))?;
                let values: Vec<f32> = bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect();
                let (conv, ssm) = values.split_at(conv_len);
                self.backend.row_from_host(&mut st.conv, slot, conv)?;
                self.backend.row_from_host(&mut st.ssm, slot, ssm)?;
            }
        }
        for (layer, pool, at) in self.ring_layers() {
            let p = &mut self.kv[pool];
            let rings = p.rings.as_mut().expect("a ring pool");
            let ring = match rings.ring_of(seq) {
                Some(r) => r,
                None => rings.hold(seq).map_err(StageError::Batch)?,
            };
            let blocks = rings.ring_blocks(ring);
            let block_bytes = p.geometry.block_bytes();
            let bytes = read(layer, block_shape(&p.geometry))
                .filter(|b| b.len() == blocks.len() * block_bytes)
                .ok_or_else(|| missing(layer))?;
            for (block, chunk) in blocks.zip(bytes.chunks_exact(block_bytes)) {
                self.backend
                    .kv_block_from_host(&mut p.cache, at, block, chunk)?;
            }
        }
        Ok(())
    }
}
