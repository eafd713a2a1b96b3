//! f16-KV attention with SmolLM2-135M's heads (9 query heads, 3 KV heads
//! of 64), on the rayon pool (`RAYON_NUM_THREADS`, default: all cores):
//! - one decode step at 512, 4K and 16K positions of context;
//! - a prompt's last 512-row ubatch ending at 512 and 4K positions, in
//!   ggml's one-chunk and tiled orders (llama.cpp tiles it).
//!
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

/// One layer's f16 cache holding random K/V at positions `0..ctx` of one
/// sequence.
struct Filled {
    cache: CpuKvCache,
    table: Vec<u32>,
    positions: Vec<u32>,
    token_seq: Vec<u32>,
}

impl Filled {
    fn new(rng: &mut impl Rng, ctx: usize) -> Self {
        let geo = KvGeometry {
            n_layers: 1,
            n_kv_heads: N_KV_HEADS,
            head_dim_k: HEAD_DIM,
            head_dim_v: HEAD_DIM,
            kv_type: KvType::F16,
            n_blocks: ctx.div_ceil(KV_BLOCK_TOKENS),
        };
        let table: Vec<u32> = (0..geo.n_blocks as u32).collect();
        let positions: Vec<u32> = (0..ctx as u32).collect();
        let token_seq = vec![0u32; ctx];
        let mut cache = CpuKvCache::new(geo).expect("KV cache");
        let k = random_act(rng, ctx, geo.k_dim());
        let v = random_act(rng, ctx, geo.v_dim());
        let tables: [&[u32]; 1] = [&table];
        cache.write(0, &k, &v, &batch(&token_seq, &positions, &tables));
        Filled {
            cache,
            table,
            positions,
            token_seq,
        }
    }

    /// Rows at `positions` (prompt rows unless the caller sets more).
    fn batch<'a>(&'a self, positions: &'a [u32], tables: &'a [&'a [u32]]) -> AttentionBatch<'a> {
        batch(&self.token_seq, positions, tables)
    }
}

fn batch<'a>(
    token_seq: &'a [u32],
    positions: &'a [u32],
    tables: &'a [&'a [u32]],
) -> AttentionBatch<'a> {
    AttentionBatch {
        positions,
        token_seq: &token_seq[..positions.len()],
        block_tables: tables,
        n_heads: N_HEADS,
        scale: 0.125,
        scale_query: false,
        window: None,
        sinks: None,
        decode: &[],
        tiled: &[],
    }
}

/// Rows of a prompt ubatch (llama-server's default `-ub`).
const UBATCH: usize = 512;

fn bench(c: &mut Criterion) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let threads = rayon::current_num_threads();
    let mut g = c.benchmark_group(format!("attention_decode/{threads}threads"));
    for ctx in [512usize, 4096, 16384] {
        let f = Filled::new(&mut rng, ctx);
        let tables: [&[u32]; 1] = [&f.table];
        let q = random_act(&mut rng, 1, N_HEADS * HEAD_DIM);
        let last = [ctx as u32 - 1];
        let step = AttentionBatch {
            decode: &[true],
            ..f.batch(&last, &tables)
        };
        g.bench_function(format!("ctx{ctx}"), |b| {
            b.iter(|| f.cache.attend(0, black_box(&q), &step))
        });
    }
    g.finish();

    let mut g = c.benchmark_group(format!("attention_prompt{UBATCH}/{threads}threads"));
    for ctx in [512usize, 4096] {
        let f = Filled::new(&mut rng, ctx);
        let tables: [&[u32]; 1] = [&f.table];
        let q = random_act(&mut rng, UBATCH, N_HEADS * HEAD_DIM);
        let all_tiled = vec![true; UBATCH];
        for (order, tiled) in [("one_chunk", &[][..]), ("tiled", &all_tiled[..])] {
            let prompt = AttentionBatch {
                tiled,
                ..f.batch(&f.positions[ctx - UBATCH..], &tables)
            };
            g.bench_function(format!("ctx{ctx}/{order}"), |b| {
                b.iter(|| f.cache.attend(0, black_box(&q), &prompt))
            });
        }
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
