//! The CUDA attention over a q8_0 / q4_0 KV cache against the CPU backend
//! (which follows ggml-cpu bit for bit), on a real GPU where there is one,
//! else on the CUDA emulator: decode after a prompt, a prompt in chunks,
//! several sequences in one decode batch, a sliding window, Gemma's
//! scaled Q, heads with and without llama.cpp's Hadamard rotation (64 and
//! 256: rotated; 96: not), and a long context split across blocks.
//!
//! The GPU stores the same blocks (it quantizes with the CPU's rounding)
//! and quantizes Q to q8_0 as the CPU does, but dequantizes both into f16
//! tiles and sums in another order, so it is not bit-equal. Tolerance
//! (relative L2 error against the CPU): 1e-3. Measured on the emulator over
//! six random seeds (the seed is printed): worst 2.9e-4 for q8_0, 2.6e-4
//! for q4_0.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use strata_kernels::cuda::CudaBackend;
use strata_kernels::{AttentionBatch, Backend, CpuBackend, KvGeometry, KV_BLOCK_TOKENS};
use strata_model::profile::KvType;

mod common;
use common::*;

/// Relative L2 error allowed against the CPU backend.
const TOLERANCE: f64 = 1e-3;

#[derive(Clone, Copy, Debug)]
struct Shape {
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    window: Option<usize>,
    scale_query: bool,
}

struct Pair {
    g: CudaBackend,
    c: CpuBackend,
    kg: <CudaBackend as Backend>::KvCache,
    kc: <CpuBackend as Backend>::KvCache,
    shape: Shape,
    kv: KvType,
    worst: f64,
}

impl Pair {
    fn new(kv: KvType, shape: Shape, n_blocks: usize) -> Self {
        let (g, c) = (gpu(), CpuBackend::new());
        let geo = KvGeometry {
            n_layers: 1,
            n_kv_heads: shape.n_kv_heads,
            head_dim_k: shape.head_dim,
            head_dim_v: shape.head_dim,
            kv_type: kv,
            n_blocks,
        };
        let kg = g.new_kv_cache(geo).expect("CUDA KV cache");
        let kc = c.new_kv_cache(geo).expect("CPU KV cache");
        Pair {
            g,
            c,
            kg,
            kc,
            shape,
            kv,
            worst: 0.0,
        }
    }

    /// One batch (token i: sequence `step[i].0` at position `step[i].1`) on
    /// both backends over random Q, K and V; asserts the GPU is near the CPU.
    fn step(&mut self, tables: &[Vec<u32>], step: &[(u32, u32)], rng: &mut ChaCha8Rng, what: &str) {
        let s = self.shape;
        let n = step.len();
        let q = random(rng, n * s.n_heads * s.head_dim, 1.5);
        let k = random(rng, n * s.n_kv_heads * s.head_dim, 1.0);
        let v = random(rng, n * s.n_kv_heads * s.head_dim, 1.0);
        let positions: Vec<u32> = step.iter().map(|t| t.1).collect();
        let token_seq: Vec<u32> = step.iter().map(|t| t.0).collect();
        let table_refs: Vec<&[u32]> = tables.iter().map(|t| t.as_slice()).collect();
        let batch = AttentionBatch {
            positions: &positions,
            token_seq: &token_seq,
            block_tables: &table_refs,
            n_heads: s.n_heads,
            scale: 1.0 / (s.head_dim as f32).sqrt(),
            scale_query: s.scale_query,
            window: s.window,
            sinks: None,
            decode: &[],
            tiled: &[],
        };
        let got = attend_on(&self.g, &mut self.kg, 0, (&q, &k, &v), n, &batch);
        let want = attend_on(&self.c, &mut self.kc, 0, (&q, &k, &v), n, &batch);
        assert_eq!(got.len(), want.len(), "output shape");
        let e = rel_err(&got, &want);
        self.worst = self.worst.max(e);
        let case = format!("{} {what}: {s:?}, {n} tokens", self.kv.name());
        println!("{case}: {e:.2e} from the CPU");
        if e >= TOLERANCE {
            let differ = self.where_they_differ(tables, step, &got, &want);
            let reread = self.attend_over_cpu_blocks(tables, step, &q, &batch, &want);
            panic!(
                "{case}: {e:.2e} from the CPU backend (tolerance {TOLERANCE:.0e}); {differ}; \
                 the GPU attending over the CPU's stored blocks: {reread:.2e} from the CPU"
            );
        }
    }

    /// The GPU's attention for this step again, after the CPU's stored
    /// blocks are copied into its cache: near the CPU when the GPU's reads
    /// are right and only its writes differ.
    fn attend_over_cpu_blocks(
        &mut self,
        tables: &[Vec<u32>],
        step: &[(u32, u32)],
        q: &[f32],
        batch: &AttentionBatch<'_>,
        want: &[f32],
    ) -> f64 {
        let mut blocks: Vec<u32> = tables.iter().flatten().copied().collect();
        blocks.sort_unstable();
        blocks.dedup();
        for b in blocks {
            let bytes = self.c.kv_block_to_host(&self.kc, 0, b).expect("CPU block");
            self.g
                .kv_block_from_host(&mut self.kg, 0, b, &bytes)
                .expect("into the GPU cache");
        }
        let n = step.len();
        let q = self.g.act_from_host(q, n, q.len() / n).unwrap();
        let out = self.g.attention(&mut self.kg, 0, &q, None, batch).unwrap();
        rel_err(&self.g.act_to_host(&out).unwrap(), want)
    }

    /// Where a failed step differs: each token's error, and whether the
    /// two caches store the same blocks (so the writes or the reads are
    /// at fault).
    fn where_they_differ(
        &self,
        tables: &[Vec<u32>],
        step: &[(u32, u32)],
        got: &[f32],
        want: &[f32],
    ) -> String {
        let row = got.len() / step.len();
        let per_token: Vec<String> = got
            .chunks(row)
            .zip(want.chunks(row))
            .map(|(g, w)| format!("{:.1e}", rel_err(g, w)))
            .collect();
        // The rows this step wrote, block by block (K and V rows are the
        // same size here: every shape has equal K and V heads).
        let mut rows: Vec<(u32, usize)> = step
            .iter()
            .map(|&(seq, pos)| {
                let pos = pos as usize;
                (
                    tables[seq as usize][pos / KV_BLOCK_TOKENS],
                    pos % KV_BLOCK_TOKENS,
                )
            })
            .collect();
        rows.sort_unstable();
        let mut stored = Vec::new();
        for (block, group) in rows.chunk_by(|a, b| a.0 == b.0).map(|g| (g[0].0, g)) {
            let gpu = self
                .g
                .kv_block_to_host(&self.kg, 0, block)
                .expect("GPU block");
            let cpu = self
                .c
                .kv_block_to_host(&self.kc, 0, block)
                .expect("CPU block");
            let row_bytes = gpu.len() / (2 * KV_BLOCK_TOKENS);
            // Bytes of one ggml block of 32 values.
            let qb = self.kv.bytes_for(32);
            let (mut differ, mut total) = (0, 0);
            let mut at_offset = vec![0usize; qb];
            let mut first = None;
            for &(_, r) in group {
                for half in [r, KV_BLOCK_TOKENS + r] {
                    let span = half * row_bytes..(half + 1) * row_bytes;
                    for (i, (a, b)) in gpu[span.clone()].iter().zip(&cpu[span.clone()]).enumerate()
                    {
                        if a != b {
                            differ += 1;
                            at_offset[i % qb] += 1;
                            let start = span.start + i / qb * qb;
                            first.get_or_insert((start, i % qb));
                        }
                    }
                    total += row_bytes;
                }
            }
            let mut line = format!("block {block}: {differ} of {total} written bytes differ");
            if let Some((start, _)) = first {
                let offsets: Vec<String> = at_offset
                    .iter()
                    .enumerate()
                    .filter(|(_, &c)| c > 0)
                    .map(|(o, c)| format!("{o}:{c}"))
                    .collect();
                line += &format!(
                    " (at block offsets {}; first such block gpu {:02x?} cpu {:02x?})",
                    offsets.join(","),
                    &gpu[start..start + qb],
                    &cpu[start..start + qb]
                );
            }
            stored.push(line);
        }
        format!(
            "per token: [{}]; stored: {}",
            per_token.join(" "),
            stored.join(", ")
        )
    }
}

fn shape(n_heads: usize, n_kv_heads: usize, head_dim: usize) -> Shape {
    Shape {
        n_heads,
        n_kv_heads,
        head_dim,
        window: None,
        scale_query: false,
    }
}

/// Prompt in chunks, then decode steps, for one sequence.
fn prompt_then_decode(
    kv: KvType,
    s: Shape,
    prompt: u32,
    chunk: usize,
    rng: &mut ChaCha8Rng,
) -> f64 {
    let mut p = Pair::new(kv, s, 24);
    let tables = vec![(0..24u32).rev().collect::<Vec<_>>()];
    let all: Vec<(u32, u32)> = (0..prompt).map(|i| (0, i)).collect();
    for part in all.chunks(chunk) {
        p.step(&tables, part, rng, "prompt");
    }
    for pos in prompt..prompt + 3 {
        p.step(&tables, &[(0, pos)], rng, "decode");
    }
    p.worst
}

fn each_kv_type(f: impl Fn(KvType, &mut ChaCha8Rng) -> f64) {
    let seed = seed();
    for kv in [KvType::Q8_0, KvType::Q4_0] {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let worst = f(kv, &mut rng);
        println!("{}: worst {worst:.2e} (seed {seed})", kv.name());
    }
}

#[test]
fn quantized_kv_prompt_and_decode_match_cpu() {
    each_kv_type(|kv, rng| {
        [
            prompt_then_decode(kv, shape(4, 2, 64), 40, 40, rng),
            prompt_then_decode(kv, shape(8, 1, 256), 33, 16, rng),
            prompt_then_decode(kv, shape(3, 3, 96), 20, 7, rng),
            prompt_then_decode(
                kv,
                Shape {
                    scale_query: true,
                    ..shape(4, 1, 128)
                },
                12,
                12,
                rng,
            ),
        ]
        .into_iter()
        .fold(0.0, f64::max)
    });
}

#[test]
fn quantized_kv_several_sequences_and_a_window_match_cpu() {
    each_kv_type(|kv, rng| {
        let s = Shape {
            window: Some(20),
            ..shape(4, 2, 64)
        };
        let mut p = Pair::new(kv, s, 24);
        let tables = vec![vec![3, 7, 1], vec![0, 5], vec![10, 2, 4]];
        for (seq, len) in [(0u32, 70u32), (1, 9), (2, 45)] {
            let all: Vec<(u32, u32)> = (0..len).map(|i| (seq, i)).collect();
            for part in all.chunks(32) {
                p.step(&tables, part, rng, "prompt");
            }
        }
        p.step(&tables, &[(0, 70), (1, 9), (2, 45)], rng, "decode batch");
        p.step(&tables, &[(2, 46), (0, 71)], rng, "decode batch");
        p.worst
    });
}

#[test]
fn quantized_kv_long_context_splits_match_cpu() {
    each_kv_type(|kv, rng| {
        let mut p = Pair::new(kv, shape(8, 1, 128), 24);
        let tables = vec![(0..24u32).collect::<Vec<_>>()];
        let all: Vec<(u32, u32)> = (0..600).map(|i| (0, i)).collect();
        for part in all.chunks(200) {
            p.step(&tables, part, rng, "prompt");
        }
        // Decode over 600 positions: the host splits it across blocks.
        p.step(&tables, &[(0, 600)], rng, "split decode");
        p.worst
    });
}

#[test]
fn quantized_kv_refuses_heads_of_partial_blocks() {
    let g = gpu();
    for kv in [KvType::Q8_0, KvType::Q4_0] {
        let geo = KvGeometry {
            n_layers: 1,
            n_kv_heads: 2,
            head_dim_k: 80,
            head_dim_v: 80,
            kv_type: kv,
            n_blocks: 2,
        };
        let err = g.new_kv_cache(geo).err().expect("refused");
        assert!(err.to_string().contains("multiple of 32"), "{err}");
    }
}
