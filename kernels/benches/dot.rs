//! vec_dot per weight type, one row of n = 4096 elements against a quantized
//! activation row. Throughput is reported as weight bytes per second (the
//! matvec is bound by reading weights). `scalar/` runs the portable kernel,
//! `simd/` whatever `vec_dot` picked on this CPU (see the group name).
//!
//!     CARGO_TARGET_DIR=... cargo bench -p strata-kernels --bench dot

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use strata_kernels::cpu::dot::{quantize_activation, simd_name, vec_dot, vec_dot_scalar};
use strata_model::quant::quantize_row;
use strata_model::GgmlType;

const N: usize = 4096;

fn bench(c: &mut Criterion) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let x: Vec<f32> = (0..N).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let w_f32: Vec<f32> = (0..N).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    for t in GgmlType::ALL {
        let mut w = vec![0u8; t.row_bytes(N as u64).unwrap() as usize];
        quantize_row(t, &w_f32, &mut w).unwrap();
        let mut xq = Vec::new();
        quantize_activation(t, &x, &mut xq);
        let mut g = c.benchmark_group(format!("vec_dot/{t}"));
        g.throughput(Throughput::Bytes(w.len() as u64));
        g.bench_function(simd_name(), |b| {
            b.iter(|| vec_dot(t, N, black_box(&w), black_box(&xq)))
        });
        g.bench_function("scalar", |b| {
            b.iter(|| vec_dot_scalar(t, N, black_box(&w), black_box(&xq)))
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1))
        .sample_size(20);
    targets = bench
}
criterion_main!(benches);
