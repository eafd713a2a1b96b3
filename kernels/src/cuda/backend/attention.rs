//! The CUDA backend's attention over the paged f16 KV cache
//! (attention.cu): `kv_write` stores the batch's K/V rows in their slots,
//! then `attend` reads each token's window through its block table.

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::{CudaAct, CudaBackend, CudaKvCache, ELEMENTWISE_THREADS};
use crate::backend::AttentionBatch;
use crate::kv::KV_BLOCK_TOKENS;

impl CudaBackend {
    /// Writes the batch's K/V rows into their slots, then attends over the
    /// paged cache (`Backend::attention`).
    pub(super) fn paged_attention(
        &self,
        cache: &mut CudaKvCache,
        layer: usize,
        q: &CudaAct,
        k: &CudaAct,
        v: &CudaAct,
        batch: &AttentionBatch<'_>,
    ) -> CudaAct {
        let g = cache.geometry;
        let n = q.rows;
        // Host-side indexing: each token's slot, and the batch's block tables.
        let mut table_start = Vec::with_capacity(batch.block_tables.len());
        let mut tables = Vec::new();
        for t in batch.block_tables {
            table_start.push(tables.len() as u32);
            tables.extend_from_slice(t);
        }
        let slots: Vec<u32> = (0..n)
            .map(|t| {
                let p = batch.positions[t] as usize;
                let table = batch.block_tables[batch.token_seq[t] as usize];
                table[p / KV_BLOCK_TOKENS] * KV_BLOCK_TOKENS as u32 + (p % KV_BLOCK_TOKENS) as u32
            })
            .collect();
        let (slots, pos, seq) = (
            self.index(&slots),
            self.index(batch.positions),
            self.index(batch.token_seq),
        );
        let (table_start, tables) = (self.index(&table_start), self.index(&tables));
        let (k_dim, v_dim) = (g.k_dim() as i32, g.v_dim() as i32);
        let cfg = LaunchConfig {
            grid_dim: (n as u32, 1, 1),
            block_dim: (ELEMENTWISE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(self.f("kv_write"));
        b.arg(&k.buf)
            .arg(&v.buf)
            .arg(&*slots)
            .arg(&mut cache.k[layer])
            .arg(&mut cache.v[layer])
            .arg(&k_dim)
            .arg(&v_dim);
        // SAFETY: slots index blocks of this stage's pool (the allocator's).
        self.launched("kv_write", || unsafe { b.launch(cfg) }.map(drop));

        let mut out = self.output_f32(n * batch.n_heads * g.head_dim_v);
        let (n_heads, n_kv_heads) = (batch.n_heads as i32, g.n_kv_heads as i32);
        let (hd_k, hd_v) = (g.head_dim_k as i32, g.head_dim_v as i32);
        let window = batch.window.map_or(0, |w| w as i32);
        let sinks = batch.sinks.map(|s| {
            assert!(
                s.len() >= batch.n_heads,
                "attention: {} sink logits for {} heads",
                s.len(),
                batch.n_heads
            );
            self.upload(&s[..batch.n_heads])
        });
        let null: u64 = 0;
        let cfg = LaunchConfig {
            grid_dim: (n as u32, batch.n_heads as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(self.f("attend"));
        b.arg(&q.buf)
            .arg(&cache.k[layer])
            .arg(&cache.v[layer])
            .arg(&*pos)
            .arg(&*seq)
            .arg(&*table_start)
            .arg(&*tables)
            .arg(&mut out)
            .arg(&n_heads)
            .arg(&n_kv_heads)
            .arg(&hd_k)
            .arg(&hd_v)
            .arg(&batch.scale)
            .arg(&window);
        match &sinks {
            Some(s) => b.arg(s),
            None => b.arg(&null),
        };
        // SAFETY: every position attended is cached (written above or by
        // an earlier batch) and its block is in the sequence's table.
        self.launched("attend", || unsafe { b.launch(cfg) }.map(drop));
        CudaAct {
            buf: out,
            rows: n,
            cols: batch.n_heads * g.head_dim_v,
        }
    }
}
