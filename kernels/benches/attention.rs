//! One decode step of f16-KV attention (one query token, SmolLM2-135M's
//! heads: 9 query heads, 3 KV heads of 64) at 512, 4K and 16K positions of
//! context, on the rayon pool (`RAYON_NUM_THREADS`, default: all cores).
//! Time per iteration is one layer's attention; a 30-layer model pays 30x.
//!
//!     CARGO_TARGET_DIR=... cargo bench -p strata-kernels --bench attention

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use rand::{Rng, SeedableRng};
use strata_kernels::cpu::{CpuAct, CpuKvCache};
use strata_kernels::{AttentionBatch, KvGeometry, KV_BLOCK_TOKENS};
use strata_model::profile::KvType;

const N_HEADS: usize = 9;
const N_KV_HEADS: usize = 3;
const HEAD_DIM: usize = 64;

fn random_act(rng: &mut impl Rng, rows: usize, cols: usize) -> CpuAct {
    CpuAct {
        data: (0..rows * cols)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect(),
        rows,
        cols,
    }
}

fn bench(c: &mut Criterion) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let mut g = c.benchmark_group(format!(
        "attention_decode/{}threads",
        rayon::current_num_threads()
    ));
    for ctx in [512usize, 4096, 16384] {
        let geo = KvGeometry {
            n_layers: 1,
            n_kv_heads: N_KV_HEADS,
            head_dim_k: HEAD_DIM,
            head_dim_v: HEAD_DIM,
            kv_type: KvType::F16,
            n_blocks: ctx.div_ceil(KV_BLOCK_TOKENS),
        };
        let mut cache = CpuKvCache::new(geo).expect("KV cache");
        let table: Vec<u32> = (0..geo.n_blocks as u32).collect();
        let tables: [&[u32]; 1] = [&table];
        let positions: Vec<u32> = (0..ctx as u32).collect();
        let token_seq = vec![0u32; ctx];
        let batch = |positions| AttentionBatch {
            positions,
            token_seq: &token_seq[..positions.len()],
            block_tables: &tables,
            n_heads: N_HEADS,
            scale: 0.125,
            scale_query: false,
            window: None,
            sinks: None,
            decode: &[],
        };
        let k = random_act(&mut rng, ctx, geo.k_dim());
        let v = random_act(&mut rng, ctx, geo.v_dim());
        cache.write(0, &k, &v, &batch(&positions));
        let q = random_act(&mut rng, 1, N_HEADS * HEAD_DIM);
        let last = [ctx as u32 - 1];
        let step = AttentionBatch {
            decode: &[true],
            ..batch(&last)
        };
        g.bench_function(format!("ctx{ctx}"), |b| {
            b.iter(|| cache.attend(0, black_box(&q), &step))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(2))
        .sample_size(20);
    targets = bench
}
criterion_main!(benches);
