//! The CUDA kernels' block layouts, checked without a GPU: quant.cuh's chunk
//! unpacking and int8 dot product are compiled as plain C++ (g++,
//! `-DSTRATA_HOST_CHECK`) into `kernels/cuda/host_check.cpp` and must give
//! the weights `strata_model::quant::dequantize_row` gives (the reference,
//! itself checked against the gguf Python package) and their exact dot
//! product with int8 activations.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use strata_model::quant::{dequantize_row, quantize_row};

mod common;
use common::QUANT_TYPES as TYPES;

fn build_harness(dir: &Path) -> std::path::PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda");
    let exe = dir.join("host_check");
    let out = Command::new("g++")
        .args([
            "-O1",
            "-std=c++17",
            "-DSTRATA_HOST_CHECK",
            "-Wno-unknown-pragmas",
            "-I",
        ])
        .arg(&src)
        .arg(src.join("host_check.cpp"))
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("g++ is needed to check the CUDA block layouts on the CPU");
    assert!(
        out.status.success(),
        "host_check.cpp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

#[test]
fn cuda_chunk_unpacking_and_dot_match_the_reference_for_every_quant_type() {
    let dir = tempfile::tempdir().unwrap();
    let exe = build_harness(dir.path());
    let seed: u64 = rand::rng().random();
    println!("seed {seed}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for &dtype in TYPES {
        let n_blocks = 5;
        let elems = n_blocks * dtype.block_elems();
        let values: Vec<f32> = (0..elems).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let mut bytes = vec![0u8; n_blocks * dtype.block_bytes()];
        quantize_row(dtype, &values, &mut bytes).unwrap();
        let mut deq = vec![0f32; elems];
        dequantize_row(dtype, &bytes, &mut deq).unwrap();

        let chunks = elems / 32;
        let acts: Vec<(f32, [i8; 32])> = (0..chunks)
            .map(|_| {
                (
                    rng.random_range(0.001f32..0.05),
                    std::array::from_fn(|_| rng.random_range(-127i8..=127)),
                )
            })
            .collect();
        let mut input = Vec::new();
        input.extend_from_slice(&(dtype.id() as i32).to_le_bytes());
        input.extend_from_slice(&(n_blocks as i32).to_le_bytes());
        input.extend_from_slice(&bytes);
        for (d, q) in &acts {
            input.extend_from_slice(&d.to_le_bytes());
            input.extend(q.iter().map(|&v| v as u8));
        }
        let mut child = Command::new(&exe)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{dtype}: harness exited with {}",
            out.status
        );
        let floats: Vec<f32> = out
            .stdout
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(floats.len(), elems + chunks, "{dtype}: output size");
        let (weights, dots) = floats.split_at(elems);

        for (i, (&got, &want)) in weights.iter().zip(&deq).enumerate() {
            assert!(
                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "{dtype}: weight {i} (block {}, chunk {}): {got} vs {want}",
                i / dtype.block_elems(),
                (i % dtype.block_elems()) / 32
            );
        }
        for (c, ((d, q), &got)) in acts.iter().zip(dots).enumerate() {
            let want: f64 = (0..32)
                .map(|e| deq[c * 32 + e] as f64 * *d as f64 * q[e] as f64)
                .sum();
            let scale: f64 = (0..32)
                .map(|e| (deq[c * 32 + e] as f64 * *d as f64 * q[e] as f64).abs())
                .sum();
            assert!(
                (got as f64 - want).abs() <= 1e-5 * scale.max(1e-6),
                "{dtype}: dot of chunk {c}: {got} vs {want}"
            );
        }
    }
}
