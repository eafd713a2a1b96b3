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
    /// Bytes of the whole pool.
    pub fn pool_bytes(&self) -> u64 {
        let per_token = self.kv_type.bytes_for(self.k_dim()) + self.kv_type.bytes_for(self.v_dim());
        (per_token * KV_BLOCK_TOKENS * self.n_blocks * self.n_layers) as u64
    }
}
