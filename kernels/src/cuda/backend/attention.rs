//! The CUDA backend's attention over the paged KV cache (attention.cu):
//! `kv_write` (f16) or `kv_write_quant` (q8_0 / q4_0 blocks) stores the
//! batch's K/V rows in their slots, then `attend_<D>` reads each token's
//! window through its block table (dequantizing quantized rows as it loads
//! them), one block per (token, KV head, context split) serving the query
//! heads of the KV head's group, and `attend_combine` merges the splits.
//! A quantized cache holds K and V rotated as llama.cpp's does
//! (`KvGeometry::hadamard_chunks`): `fwht_rows` rotates K, V and Q before,
//! and the output after.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use strata_model::profile::KvType;

use super::graphs::{BatchArrays, IndexRole};
use super::{CudaAct, CudaBackend, CudaKvCache, ELEMENTWISE_THREADS, MAX_HEAD_DIM};
use crate::backend::{AttentionBatch, KernelError};

/// Query heads one attention block serves (attention.cu's GROUP_HEADS).
const GROUP_HEADS: usize = 8;
/// Most context splits `attend_combine` merges (attention.cu's MAX_SPLITS).
pub(super) const MAX_SPLITS: usize = 64;
/// Fewest positions worth a split of their own: below that, writing and
/// merging a partial costs more than the split saves.
pub(super) const MIN_SPLIT_POSITIONS: usize = 128;
/// Blocks per SM the split count aims for, so that every SM has blocks to
/// switch between while loads are in flight.
const BLOCKS_PER_SM: usize = 4;
const COMBINE_THREADS: u32 = 128;

/// The launch shape of one attention call, chosen on the host from the
/// batch's size and longest context; each block finds its own positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AttendPlan {
    /// `attend_<D>`: the narrowest kernel for heads of `head_dim` values.
    pub kernel: &'static str,
    pub threads: u32,
    /// Blocks per KV head, each serving `heads_per_block` of its group.
    pub chunks: usize,
    pub heads_per_block: usize,
    /// Context splits per (token, KV head); 1 writes the output directly.
    pub splits: usize,
}

impl AttendPlan {
    pub fn new(
        batch: &AttentionBatch<'_>,
        n_kv_heads: usize,
        head_dim: usize,
        sm_count: usize,
    ) -> Self {
        let (kernel, threads) = match head_dim {
            0..=64 => ("attend_64", 64),
            65..=128 => ("attend_128", 128),
            129..=256 => ("attend_256", 128),
            _ => ("attend_512", 128),
        };
        debug_assert!(head_dim <= MAX_HEAD_DIM, "new_kv_cache refuses wider heads");
        // A group of more than GROUP_HEADS takes several blocks, in equal shares.
        let group = (batch.n_heads / n_kv_heads.max(1)).max(1);
        let chunks = group.div_ceil(GROUP_HEADS);
        let heads_per_block = group.div_ceil(chunks);
        let longest = batch
            .positions
            .iter()
            .map(|&p| {
                let p = p as usize;
                p + 1 - batch.window.map_or(0, |w| (p + 1).saturating_sub(w))
            })
            .max()
            .unwrap_or(0);
        // Split only what would leave SMs idle: a decode batch of few
        // sequences; a prompt has blocks enough in its tokens.
        let blocks = (batch.positions.len() * n_kv_heads * chunks).max(1);
        let wanted = (sm_count * BLOCKS_PER_SM).div_ceil(blocks);
        let splits = wanted
            .min(longest.div_ceil(MIN_SPLIT_POSITIONS))
            .clamp(1, MAX_SPLITS);
        AttendPlan {
            kernel,
            threads,
            chunks,
            heads_per_block,
            splits,
        }
    }
}

/// attention.cu's KV_F16, KV_Q8_0, KV_Q4_0.
fn kv_type_code(kv: KvType) -> i32 {
    match kv {
        KvType::F16 => 0,
        KvType::Q8_0 => 1,
        KvType::Q4_0 => 2,
    }
}

/// Threads of one `fwht_rows` block.
const FWHT_THREADS: u32 = 128;

impl CudaBackend {
    /// `x` (`len` values) rotated in chunks of `chunk` values by
    /// `fwht_rows`, or `x` itself when `chunk` is `None`.
    fn rotated<'a>(
        &self,
        x: &'a CudaSlice<f32>,
        len: usize,
        chunk: Option<usize>,
        keep: &'a mut Option<CudaSlice<f32>>,
    ) -> Result<&'a CudaSlice<f32>, KernelError> {
        let Some(n) = chunk else {
            return Ok(x);
        };
        let mut y = self.output::<f32>(len)?;
        let cfg = LaunchConfig {
            grid_dim: ((len / n) as u32, 1, 1),
            block_dim: (FWHT_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let n = n as i32;
        let mut b = self.stream.launch_builder(self.f("fwht_rows")?);
        b.arg(x).arg(&mut y).arg(&n);
        // SAFETY: x and y hold len values, whole chunks of n <= MAX_FWHT.
        self.launched("fwht_rows", || unsafe { b.launch(cfg) }.map(drop))?;
        Ok(keep.insert(y))
    }

    /// Writes the batch's K/V rows into their slots, then attends over the
    /// paged cache (`Backend::attention`).
    pub(super) fn paged_attention(
        &self,
        cache: &mut CudaKvCache,
        layer: usize,
        q: &CudaAct,
        new_kv: Option<(&CudaAct, &CudaAct)>,
        batch: &AttentionBatch<'_>,
    ) -> Result<CudaAct, KernelError> {
        let g = cache.geometry;
        let n = q.rows;
        // Host-side indexing (each token's slot, the batch's block tables),
        // on the device once a batch.
        let arrays = BatchArrays::new(batch.positions, batch.token_seq, batch.block_tables, &[])?;
        let index = |role| self.index(role, arrays.get(role));
        let (slots, pos, seq) = (
            index(IndexRole::Slots)?,
            index(IndexRole::Positions)?,
            index(IndexRole::TokenSeq)?,
        );
        let (table_start, tables) = (index(IndexRole::TableStart)?, index(IndexRole::Tables)?);
        let (rot_k, rot_v) = g.hadamard_chunks();
        let kv_type = kv_type_code(g.kv_type);
        if let Some((k, v)) = new_kv {
            let (k_dim, v_dim) = (g.k_dim() as i32, g.v_dim() as i32);
            let cfg = LaunchConfig {
                grid_dim: (n as u32, 1, 1),
                block_dim: (ELEMENTWISE_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let (mut k_keep, mut v_keep) = (None, None);
            let k_rows = self.rotated(&k.buf, n * g.k_dim(), rot_k, &mut k_keep)?;
            let v_rows = self.rotated(&v.buf, n * g.v_dim(), rot_v, &mut v_keep)?;
            let name = if g.kv_type == KvType::F16 {
                "kv_write"
            } else {
                "kv_write_quant"
            };
            let mut b = self.stream.launch_builder(self.f(name)?);
            b.arg(k_rows)
                .arg(v_rows)
                .arg(&*slots)
                .arg(&mut cache.k[layer])
                .arg(&mut cache.v[layer])
                .arg(&k_dim)
                .arg(&v_dim);
            if g.kv_type != KvType::F16 {
                b.arg(&kv_type);
            }
            // SAFETY: slots index blocks of this stage's pool (the
            // allocator's), whose rows are sized for this KV type.
            self.launched(name, || unsafe { b.launch(cfg) }.map(drop))?;
        }
        let mut q_keep = None;
        let q_rows = self.rotated(&q.buf, n * batch.n_heads * g.head_dim_k, rot_k, &mut q_keep)?;

        let plan = AttendPlan::new(
            batch,
            g.n_kv_heads,
            g.head_dim_k.max(g.head_dim_v),
            self.sm_count,
        );
        let mut out = self.output(n * batch.n_heads * g.head_dim_v)?;
        let (n_heads, n_kv_heads) = (batch.n_heads as i32, g.n_kv_heads as i32);
        let (hd_k, hd_v) = (g.head_dim_k as i32, g.head_dim_v as i32);
        let window = batch.window.map_or(0, |w| w as i32);
        // The scale goes on Q (before its f16 rounding) or on the scores,
        // as the CPU backend does.
        let (q_scale, score_scale) = if batch.scale_query {
            (batch.scale, 1.0f32)
        } else {
            (1.0f32, batch.scale)
        };
        // (`op_checks::attention` saw a sink logit for every head.)
        let sinks = match batch.sinks {
            Some(s) => Some(self.constant(&s[..batch.n_heads])?),
            None => None,
        };
        // Each split's accumulator and (max, sum) per (token, query head).
        let parts = if plan.splits > 1 {
            let rows = n * batch.n_heads * plan.splits;
            Some((
                self.output::<f32>(rows * g.head_dim_v)?,
                self.output::<f32>(rows * 2)?,
            ))
        } else {
            None
        };
        let null: u64 = 0;
        let heads_per_block = plan.heads_per_block as i32;
        let cfg = LaunchConfig {
            grid_dim: (
                n as u32,
                (g.n_kv_heads * plan.chunks) as u32,
                plan.splits as u32,
            ),
            block_dim: (plan.threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(self.f(plan.kernel)?);
        b.arg(q_rows)
            .arg(&cache.k[layer])
            .arg(&cache.v[layer])
            .arg(&kv_type)
            .arg(&*pos)
            .arg(&*seq)
            .arg(&*table_start)
            .arg(&*tables)
            .arg(&mut out);
        match &parts {
            Some((acc, ml)) => b.arg(acc).arg(ml),
            None => b.arg(&null).arg(&null),
        };
        match &sinks {
            Some(s) => b.arg(&**s),
            None => b.arg(&null),
        };
        b.arg(&n_heads)
            .arg(&n_kv_heads)
            .arg(&hd_k)
            .arg(&hd_v)
            .arg(&heads_per_block)
            .arg(&q_scale)
            .arg(&score_scale)
            .arg(&window);
        // SAFETY: every position attended is cached (written above or by
        // an earlier batch) and its block is in the sequence's table; the
        // kernel's heads (D) are at least hd_k and hd_v; the partials hold
        // every (token, head, split) when there is more than one split.
        self.launched(plan.kernel, || unsafe { b.launch(cfg) }.map(drop))?;

        if let Some((acc, ml)) = &parts {
            let splits = plan.splits as i32;
            let cfg = LaunchConfig {
                grid_dim: (n as u32, batch.n_heads as u32, 1),
                block_dim: (COMBINE_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut b = self.stream.launch_builder(self.f("attend_combine")?);
            b.arg(acc).arg(ml);
            match &sinks {
                Some(s) => b.arg(&**s),
                None => b.arg(&null),
            };
            b.arg(&mut out).arg(&n_heads).arg(&hd_v).arg(&splits);
            // SAFETY: the partials of n tokens x n_heads x splits, all
            // written by the launch above; out has n x n_heads x hd_v.
            self.launched("attend_combine", || unsafe { b.launch(cfg) }.map(drop))?;
        }
        let len = n * batch.n_heads * g.head_dim_v;
        let mut out_keep = None;
        self.rotated(&out, len, rot_v, &mut out_keep)?;
        Ok(CudaAct {
            buf: out_keep.unwrap_or(out),
            rows: n,
            cols: batch.n_heads * g.head_dim_v,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::AttendPlan;
    use crate::backend::AttentionBatch;

    fn plan(
        positions: &[u32],
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        window: Option<usize>,
    ) -> AttendPlan {
        let token_seq = vec![0; positions.len()];
        let batch = AttentionBatch {
            positions,
            token_seq: &token_seq,
            block_tables: &[],
            n_heads,
            scale: 1.0,
            scale_query: false,
            window,
            sinks: None,
            decode: &[],
            tiled: &[],
        };
        // The emulator's 4 SMs, as kernels/tests/cuda_attention.rs runs.
        AttendPlan::new(&batch, n_kv_heads, head_dim, 4)
    }

    #[test]
    fn kernels_by_head_width() {
        let names: Vec<_> = [36, 64, 80, 128, 192, 256, 320, 512]
            .map(|d| plan(&[0], 1, 1, d, None).kernel)
            .into();
        let want = [
            "attend_64",
            "attend_64",
            "attend_128",
            "attend_128",
            "attend_256",
            "attend_256",
            "attend_512",
            "attend_512",
        ];
        assert_eq!(names, want);
    }

    #[test]
    fn groups_wider_than_a_block_take_equal_shares() {
        let p = |n_heads, n_kv| {
            let p = plan(&[0], n_heads, n_kv, 64, None);
            (p.chunks, p.heads_per_block)
        };
        assert_eq!(p(2, 2), (1, 1));
        assert_eq!(p(8, 1), (1, 8));
        assert_eq!(p(12, 1), (2, 6));
        assert_eq!(p(16, 2), (1, 8));
        assert_eq!(p(40, 1), (5, 8));
        assert_eq!(p(9, 1), (2, 5));
    }

    /// The splits the CUDA attention tests rely on: decode of a long
    /// context splits (one per 128 positions, up to 16 blocks on 4 SMs),
    /// short contexts and prompts do not, and a window bounds the context.
    #[test]
    fn long_decode_contexts_split_and_prompts_do_not() {
        let splits = |positions: &[u32], n_kv, window| plan(positions, 8, n_kv, 128, window).splits;
        assert_eq!(splits(&[1200], 1, None), 10);
        assert_eq!(splits(&[600], 1, None), 5);
        assert_eq!(splits(&[5000], 1, None), 16);
        assert_eq!(splits(&[700, 37, 300, 0], 2, None), 2);
        assert_eq!(splits(&[900], 2, Some(300)), 3);
        assert_eq!(splits(&[100], 1, None), 1);
        let prompt: Vec<u32> = (0..300).collect();
        assert_eq!(splits(&prompt, 1, None), 1);
        // A large GPU: at most MAX_SPLITS.
        let token_seq = [0];
        let batch = AttentionBatch {
            positions: &[100_000],
            token_seq: &token_seq,
            block_tables: &[],
            n_heads: 8,
            scale: 1.0,
            scale_query: false,
            window: None,
            sinks: None,
            decode: &[],
            tiled: &[],
        };
        assert_eq!(
            AttendPlan::new(&batch, 1, 128, 132).splits,
            super::MAX_SPLITS
        );
    }
}
