//! Geometry of the paged KV cache: a stage's cache is a pool of fixed-size
//! blocks per layer; a sequence owns a list of blocks (its block table).

use strata_model::profile::KvType;
/// Tokens per KV block (defined beside the stage memory it sizes).
pub use strata_model::profile::KV_BLOCK_TOKENS;

/// Index of a block in a stage's pool.
pub type KvBlockId = u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvGeometry {
    /// Layers held by this stage.
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim_k: usize,
    pub head_dim_v: usize,
    pub kv_type: KvType,
    /// Blocks in the pool (shared by all sequences).
    pub n_blocks: usize,
}

impl KvGeometry {
    pub fn k_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim_k
    }
    pub fn v_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim_v
    }
    /// Bytes of one slot's K row and of its V row.
    pub fn row_bytes(&self) -> (usize, usize) {
        (
            self.kv_type.bytes_for(self.k_dim()),
            self.kv_type.bytes_for(self.v_dim()),
        )
    }
    /// Bytes of one block of one layer: its K rows, then its V rows.
    pub fn block_bytes(&self) -> usize {
        let (k, v) = self.row_bytes();
        (k + v) * KV_BLOCK_TOKENS
    }

    /// Checks a block of a layer exists, and (`bytes`) a block's bytes.
    pub fn check_block(
        &self,
        layer: usize,
        block: KvBlockId,
        bytes: Option<usize>,
    ) -> Result<(), String> {
        if layer >= self.n_layers || block as usize >= self.n_blocks {
            return Err(format!(
                "KV block {block} of layer {layer}: the cache has {} blocks of {} layers",
                self.n_blocks, self.n_layers
            ));
        }
        match bytes {
            Some(n) if n != self.block_bytes() => Err(format!(
                "{n} bytes for a KV block of {} bytes",
                self.block_bytes()
            )),
            _ => Ok(()),
        }
    }

    /// Bytes of the whole pool.
    pub fn pool_bytes(&self) -> u64 {
        let per_token = self.kv_type.bytes_for(self.k_dim()) + self.kv_type.bytes_for(self.v_dim());
        (per_token * KV_BLOCK_TOKENS * self.n_blocks * self.n_layers) as u64
    }

    /// Refuses a quantized cache whose heads are not whole 32-value blocks
    /// (llama.cpp refuses them too): a head's slice of a row is read alone.
    pub fn check_kv_type(&self) -> Result<(), String> {
        let qk = self.kv_type.block_values();
        if self.head_dim_k % qk != 0 || self.head_dim_v % qk != 0 {
            return Err(format!(
                "a {} KV cache needs heads of a multiple of {qk} values (as llama.cpp does); \
                 this model's are {} (K) and {} (V): use --cache-type-k/-v f16",
                self.kv_type.name(),
                self.head_dim_k,
                self.head_dim_v
            ));
        }
        Ok(())
    }

    /// llama.cpp's rotation of a quantized cache (`attn_rot_k` /
    /// `attn_rot_v`, llama-kv-cache.cpp): the Walsh-Hadamard chunk of K
    /// and Q (the largest power of two dividing the head, from 64), and of
    /// V and the attention output (64), for heads of a multiple of 64
    /// values; `None` where it does not rotate (and for f16).
    pub fn hadamard_chunks(&self) -> (Option<usize>, Option<usize>) {
        if self.kv_type == KvType::F16 {
            return (None, None);
        }
        let rot_k = (self.head_dim_k > 0 && self.head_dim_k % 64 == 0)
            .then(|| 1usize << self.head_dim_k.trailing_zeros());
        let rot_v = (self.head_dim_v > 0 && self.head_dim_v % 64 == 0).then_some(64);
        (rot_k, rot_v)
    }
}
