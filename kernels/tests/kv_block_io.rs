//! A KV block read out of one cache (`kv_block_to_host`) and written into
//! another (`kv_block_from_host`) attends as the original: what the prefix
//! cache on disk relies on. For f16, q8_0 and q4_0 pools, on the CPU and on
//! the CUDA backend (the emulator here), and bad blocks are refused.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use strata_kernels::{AttentionBatch, Backend, CpuBackend, KvGeometry, KV_BLOCK_TOKENS};
use strata_model::profile::KvType;

mod common;
use common::*;

/// Two KV heads of 64, 4 query heads, 40 tokens (a full block and part of
/// the next) written into blocks 3 and 1 of one cache, copied block by
/// block into blocks 0 and 2 of another; a query over all 40 positions
/// then gives the same output from both, bit for bit.
fn round_trip<B: Backend>(b: &B, kv_type: KvType) {
    let geo = KvGeometry {
        n_layers: 2,
        n_kv_heads: 2,
        head_dim_k: 64,
        head_dim_v: 64,
        kv_type,
        n_blocks: 4,
    };
    let (n, heads) = (40usize, 4usize);
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    let (q, k, v) = (
        random(&mut rng, n * heads * 64, 1.0),
        random(&mut rng, n * 128, 1.0),
        random(&mut rng, n * 128, 1.0),
    );
    let positions: Vec<u32> = (0..n as u32).collect();
    let token_seq = vec![0u32; n];
    let run = |cache: &mut B::KvCache, table: &[u32], write: bool| {
        let batch = AttentionBatch {
            positions: &positions,
            token_seq: &token_seq,
            block_tables: &[table],
            n_heads: heads,
            scale: 0.125,
            scale_query: false,
            window: None,
            sinks: None,
            decode: &[],
            tiled: &[],
        };
        let qa = b.act_from_host(&q, n, heads * 64).unwrap();
        let (ka, va) = (
            b.act_from_host(&k, n, 128).unwrap(),
            b.act_from_host(&v, n, 128).unwrap(),
        );
        let new_kv = write.then_some((&ka, &va));
        b.act_to_host(&b.attention(cache, 1, &qa, new_kv, &batch).unwrap())
            .unwrap()
    };
    let mut first = b.new_kv_cache(geo).unwrap();
    let want = run(&mut first, &[3, 1], true);
    let mut second = b.new_kv_cache(geo).unwrap();
    for (from, to) in [(3, 0), (1, 2)] {
        let bytes = b.kv_block_to_host(&first, 1, from).unwrap();
        assert_eq!(bytes.len(), geo.block_bytes(), "{kv_type:?}");
        b.kv_block_from_host(&mut second, 1, to, &bytes).unwrap();
        assert_eq!(b.kv_block_to_host(&second, 1, to).unwrap(), bytes);
    }
    let got = run(&mut second, &[0, 2], false);
    assert_eq!(
        got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        "{kv_type:?}: attention over the copied blocks"
    );
    // Bad blocks, layers and lengths are errors, not panics.
    assert!(b.kv_block_to_host(&first, 2, 0).is_err());
    assert!(b.kv_block_to_host(&first, 0, 4).is_err());
    let short = vec![0u8; geo.block_bytes() - 1];
    assert!(b.kv_block_from_host(&mut second, 0, 0, &short).is_err());
    assert_eq!(KV_BLOCK_TOKENS, 32);
}

#[test]
fn cpu_kv_blocks_round_trip() {
    for t in [KvType::F16, KvType::Q8_0, KvType::Q4_0] {
        round_trip(&CpuBackend::new(), t);
    }
}

#[test]
fn cuda_kv_blocks_round_trip() {
    let g = gpu();
    for t in [KvType::F16, KvType::Q8_0, KvType::Q4_0] {
        round_trip(&g, t);
    }
}
