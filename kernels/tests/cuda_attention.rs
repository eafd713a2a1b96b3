//! The CUDA attention (attention.cu: `attend_<D>` and `attend_combine`)
//! against the CPU backend over the paged f16 KV cache, on a real GPU where
//! there is one, else on the CUDA emulator: GQA groups of 1 to 16 query
//! heads, every head-dim kernel (64 to 512, K and V of different widths),
//! a sliding window, sinks, prompts, and decode batches of sequences of
//! different lengths with contexts long enough to be split across blocks.
//!
//! Tolerances (relative L2 error): against an exact reference (f64 over
//! the f16 K/V and the f16-rounded Q both backends use) 1e-5, what f32
//! sums and `expf` leave (measured: 1e-7 to 7e-7); against the CPU backend 5e-3, as the op tests,
//! or twice the CPU's own distance from the exact result where that is
//! larger: the CPU rounds its V sum to f16 after every position like ggml,
//! an error that grows with the context (about 5e-3 at 1200 random
//! positions), where the GPU sums in f32.
//!
//! The emulator reports 4 SMs, so the host aims for 16 blocks: a decode
//! batch of a few tokens over a context of more than 128 positions splits
//! (`AttendPlan`'s unit tests pin the counts for these shapes).

use std::collections::HashMap;

use half::f16;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use strata_kernels::cuda::{CudaBackend, CudaKvCache};
use strata_kernels::{AttentionBatch, Backend, CpuBackend, KvGeometry};
use strata_model::profile::KvType;

mod common;
use common::*;

const TOLERANCE: f64 = 5e-3;
const EXACT_TOLERANCE: f64 = 1e-5;

/// Heads and the attention options of a case.
#[derive(Clone, Copy, Debug)]
struct Heads {
    n_heads: usize,
    n_kv_heads: usize,
    hd_k: usize,
    hd_v: usize,
    window: Option<usize>,
    scale_query: bool,
}

impl Heads {
    fn new(n_heads: usize, n_kv_heads: usize, hd_k: usize, hd_v: usize) -> Self {
        Heads {
            n_heads,
            n_kv_heads,
            hd_k,
            hd_v,
            window: None,
            scale_query: false,
        }
    }
}

/// Both backends' caches for `heads`, `n_blocks` blocks of one layer.
struct Caches {
    g: CudaBackend,
    c: CpuBackend,
    kg: CudaKvCache,
    kc: <CpuBackend as Backend>::KvCache,
    heads: Heads,
    /// K and V rows written so far, rounded to f16, by (sequence, position).
    kv: HashMap<(u32, u32), (Vec<f32>, Vec<f32>)>,
}

impl Caches {
    fn new(heads: Heads, n_blocks: usize) -> Self {
        let (g, c) = (gpu(), CpuBackend::new());
        let geo = KvGeometry {
            n_layers: 1,
            n_kv_heads: heads.n_kv_heads,
            head_dim_k: heads.hd_k,
            head_dim_v: heads.hd_v,
            kv_type: KvType::F16,
            n_blocks,
        };
        let kg = g.new_kv_cache(geo).expect("CUDA KV cache");
        let kc = c.new_kv_cache(geo).expect("CPU KV cache");
        Caches {
            g,
            c,
            kg,
            kc,
            heads,
            kv: HashMap::new(),
        }
    }

    /// One batch on both backends over random Q, K and V: token `i` is
    /// sequence `step[i].0` at position `step[i].1`. Returns the GPU's
    /// relative error against the CPU, and the GPU's and the CPU's against
    /// the exact result.
    fn step(
        &mut self,
        tables: &[Vec<u32>],
        step: &[(u32, u32)],
        sinks: Option<&[f32]>,
        rng: &mut ChaCha8Rng,
    ) -> (f64, f64, f64) {
        let h = self.heads;
        let n = step.len();
        let (q_cols, k_cols, v_cols) = (
            h.n_heads * h.hd_k,
            h.n_kv_heads * h.hd_k,
            h.n_kv_heads * h.hd_v,
        );
        let positions: Vec<u32> = step.iter().map(|s| s.1).collect();
        let token_seq: Vec<u32> = step.iter().map(|s| s.0).collect();
        let q = random(rng, n * q_cols, 1.0);
        let k = random(rng, n * k_cols, 1.0);
        let v = random(rng, n * v_cols, 1.0);
        let table_refs: Vec<&[u32]> = tables.iter().map(|t| t.as_slice()).collect();
        let batch = AttentionBatch {
            positions: &positions,
            token_seq: &token_seq,
            block_tables: &table_refs,
            n_heads: h.n_heads,
            scale: 1.0 / (h.hd_k as f32).sqrt(),
            scale_query: h.scale_query,
            window: h.window,
            sinks,
            decode: &[],
            tiled: &[],
        };
        let (g, c) = (&self.g, &self.c);
        let got = attend_on(g, &mut self.kg, 0, (&q, &k, &v), n, &batch);
        let want = attend_on(c, &mut self.kc, 0, (&q, &k, &v), n, &batch);
        assert_eq!(got.len(), n * h.n_heads * h.hd_v, "output shape");
        let round =
            |x: &[f32]| -> Vec<f32> { x.iter().map(|&v| f16::from_f32(v).to_f32()).collect() };
        for (t, &(seq, pos)) in step.iter().enumerate() {
            let k_row = round(&k[t * k_cols..(t + 1) * k_cols]);
            let v_row = round(&v[t * v_cols..(t + 1) * v_cols]);
            self.kv.insert((seq, pos), (k_row, v_row));
        }
        let exact = self.exact(&q, step, &batch);
        (
            rel_err(&got, &want),
            rel_err(&got, &exact),
            rel_err(&want, &exact),
        )
    }

    /// The attention in f64 over the rows written, with Q rounded to f16
    /// (after its scale when `scale_query`) as both backends do.
    fn exact(&self, q: &[f32], step: &[(u32, u32)], batch: &AttentionBatch<'_>) -> Vec<f32> {
        let h = self.heads;
        let group = h.n_heads / h.n_kv_heads;
        let (q_scale, score_scale) = if h.scale_query {
            (batch.scale, 1.0)
        } else {
            (1.0, batch.scale as f64)
        };
        let mut out = Vec::with_capacity(step.len() * h.n_heads * h.hd_v);
        for (t, &(seq, pos)) in step.iter().enumerate() {
            let first = h.window.map_or(0, |w| (pos + 1).saturating_sub(w as u32));
            let rows: Vec<&(Vec<f32>, Vec<f32>)> =
                (first..=pos).map(|p| &self.kv[&(seq, p)]).collect();
            for head in 0..h.n_heads {
                let kvh = head / group;
                let qh: Vec<f64> = q[(t * h.n_heads + head) * h.hd_k..][..h.hd_k]
                    .iter()
                    .map(|&x| f16::from_f32(x * q_scale).to_f32() as f64)
                    .collect();
                let scores: Vec<f64> = rows
                    .iter()
                    .map(|(k, _)| {
                        let kr = &k[kvh * h.hd_k..(kvh + 1) * h.hd_k];
                        qh.iter().zip(kr).map(|(a, &b)| a * b as f64).sum::<f64>() * score_scale
                    })
                    .collect();
                let sink = batch.sinks.map(|s| s[head] as f64);
                let top = scores
                    .iter()
                    .copied()
                    .chain(sink)
                    .fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - top).exp()).collect();
                let denom = weights.iter().sum::<f64>() + sink.map_or(0.0, |s| (s - top).exp());
                for d in 0..h.hd_v {
                    let sum: f64 = rows
                        .iter()
                        .zip(&weights)
                        .map(|((_, v), w)| w * v[kvh * h.hd_v + d] as f64)
                        .sum();
                    out.push((sum / denom) as f32);
                }
            }
        }
        out
    }

    /// Asserts one batch's errors (`what` and the step name the case).
    fn assert_close(
        &mut self,
        tables: &[Vec<u32>],
        step: &[(u32, u32)],
        sinks: Option<&[f32]>,
        rng: &mut ChaCha8Rng,
        what: &str,
    ) {
        let (e_cpu, e_exact, cpu_exact) = self.step(tables, step, sinks, rng);
        let (a, b) = (step[0], step[step.len() - 1]);
        let case = format!(
            "{what}: {:?}, {} tokens {a:?}..={b:?}",
            self.heads,
            step.len()
        );
        println!(
            "{case}: {e_cpu:.2e} from the CPU, {e_exact:.2e} from exact (the CPU {cpu_exact:.2e})"
        );
        assert!(
            e_exact < EXACT_TOLERANCE,
            "{case}: {e_exact:.2e} from the exact result"
        );
        let tolerance = TOLERANCE.max(2.0 * cpu_exact);
        assert!(
            e_cpu < tolerance,
            "{case}: {e_cpu:.2e} from the CPU backend (tolerance {tolerance:.2e})"
        );
    }

    /// Fills positions `from..to` of sequence `seq` in prompt batches of
    /// up to `chunk` tokens, checking each batch's output.
    fn prompt(
        &mut self,
        tables: &[Vec<u32>],
        seq: u32,
        (from, to): (u32, u32),
        chunk: usize,
        sinks: Option<&[f32]>,
        rng: &mut ChaCha8Rng,
        what: &str,
    ) {
        let all: Vec<(u32, u32)> = (from..to).map(|p| (seq, p)).collect();
        for part in all.chunks(chunk) {
            self.assert_close(tables, part, sinks, rng, what);
        }
    }

    fn check(
        &mut self,
        tables: &[Vec<u32>],
        step: &[(u32, u32)],
        sinks: Option<&[f32]>,
        rng: &mut ChaCha8Rng,
        what: &str,
    ) {
        self.assert_close(tables, step, sinks, rng, what);
    }
}

/// Block tables of `n` blocks each, scattered over the pool (blocks of
/// different sequences interleaved, out of order).
fn scattered_tables(lens_blocks: &[usize]) -> (Vec<Vec<u32>>, usize) {
    let total: usize = lens_blocks.iter().sum();
    // A fixed permutation of 0..total: i * 7 mod total with total not a
    // multiple of 7 (padded by one block otherwise).
    let pool = if total % 7 == 0 { total + 1 } else { total };
    let order: Vec<u32> = (0..pool).map(|i| (i * 7 % pool) as u32).collect();
    let mut next = 0;
    let tables = lens_blocks
        .iter()
        .map(|&n| {
            let t = order[next..next + n].to_vec();
            next += n;
            t
        })
        .collect();
    (tables, pool)
}

/// Every head-dim kernel (64, 128, 256, 512) under GQA groups of 1, 4 and
/// 8: a 70-token prompt of one sequence, then a decode step of it with a
/// second sequence's 3-token prompt in the same batch.
#[test]
fn gqa_groups_and_head_dims_match_cpu() {
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    for hd in [64, 128, 256, 512] {
        for (n_heads, n_kv_heads) in [(2, 2), (8, 2), (8, 1)] {
            let (tables, pool) = scattered_tables(&[3, 1]);
            let mut caches = Caches::new(Heads::new(n_heads, n_kv_heads, hd, hd), pool);
            let what = "gqa and head dims";
            caches.prompt(&tables, 0, (0, 70), 70, None, &mut rng, what);
            let step = [(0, 70), (1, 0), (1, 1), (1, 2)];
            caches.check(&tables, &step, None, &mut rng, what);
        }
    }
}

/// K and V of different widths, widths that are not a kernel's (the
/// columns past them padded), widths not a multiple of 8 (the kernel's
/// 2-byte loads), and groups wider than one block serves (12: two blocks
/// of 6; 16: two of 8).
#[test]
fn uneven_heads_match_cpu() {
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    for heads in [
        Heads::new(4, 2, 192, 128),
        Heads::new(4, 1, 96, 80),
        Heads::new(6, 3, 52, 36),
        Heads::new(4, 2, 512, 256),
        Heads::new(2, 1, 320, 512),
        Heads::new(12, 1, 64, 64),
        Heads::new(16, 2, 128, 128),
    ] {
        let (tables, pool) = scattered_tables(&[6, 2]);
        let mut caches = Caches::new(heads, pool);
        let what = "uneven heads";
        caches.prompt(&tables, 0, (0, 170), 170, None, &mut rng, what);
        caches.prompt(&tables, 1, (0, 40), 40, None, &mut rng, what);
        caches.check(&tables, &[(1, 40), (0, 170)], None, &mut rng, what);
    }
}

/// One sequence of 1200 positions (600 with heads of 512), decoded: its
/// context is split across 10 (5) blocks, one per 128 positions, short of
/// the 16 blocks the emulator's 4 SMs want. The prompt goes in 300-token
/// batches, each attending over the cache the earlier ones filled.
#[test]
fn long_context_split_across_blocks_matches_cpu() {
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    for (heads, len) in [
        (Heads::new(8, 1, 128, 128), 1200),
        (Heads::new(4, 1, 512, 512), 600),
    ] {
        let (tables, pool) = scattered_tables(&[len as usize / 32 + 1]);
        let mut caches = Caches::new(heads, pool);
        let what = "long context";
        caches.prompt(&tables, 0, (0, len), 300, None, &mut rng, what);
        for p in len..len + 3 {
            caches.check(&tables, &[(0, p)], None, &mut rng, what);
        }
    }
}

/// A decode batch of sequences of 700, 37, 300 and 1 positions (the
/// longest sets the split count: 2 and 4 here; the short ones leave
/// splits empty), after their prompts.
#[test]
fn mixed_decode_batch_matches_cpu() {
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    for heads in [Heads::new(8, 2, 128, 128), Heads::new(4, 1, 64, 64)] {
        let (tables, pool) = scattered_tables(&[22, 2, 10, 1]);
        let mut caches = Caches::new(heads, pool);
        let what = "mixed decode";
        caches.prompt(&tables, 0, (0, 700), 350, None, &mut rng, what);
        caches.prompt(&tables, 1, (0, 37), 37, None, &mut rng, what);
        caches.prompt(&tables, 2, (0, 300), 300, None, &mut rng, what);
        let step = [(0, 700), (1, 37), (2, 300), (3, 0)];
        caches.check(&tables, &step, None, &mut rng, what);
        let step = [(2, 301), (0, 701), (1, 38), (3, 1)];
        caches.check(&tables, &step, None, &mut rng, what);
    }
}

/// A sliding window (here 300 positions of 900, and 7) with and without
/// gpt-oss's sinks, on split and unsplit decode and on a prompt; sinks
/// from well below to well above the scores; the scale on Q (Gemma-3).
#[test]
fn sliding_window_and_sinks_match_cpu() {
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    for (window, with_sinks, scale_query) in [
        (Some(300), false, false),
        (Some(300), true, false),
        (None, true, false),
        (Some(7), true, true),
    ] {
        let heads = Heads {
            window,
            scale_query,
            ..Heads::new(8, 2, 64, 64)
        };
        let sinks = random(&mut rng, heads.n_heads, 4.0);
        let sinks = with_sinks.then_some(sinks.as_slice());
        let (tables, pool) = scattered_tables(&[29, 2]);
        let mut caches = Caches::new(heads, pool);
        let what = "window and sinks";
        caches.prompt(&tables, 0, (0, 900), 450, sinks, &mut rng, what);
        caches.prompt(&tables, 1, (0, 40), 40, sinks, &mut rng, what);
        caches.check(&tables, &[(0, 900)], sinks, &mut rng, what);
        caches.check(&tables, &[(1, 40), (0, 901)], sinks, &mut rng, what);
    }
}

/// Heads up to 512 values are taken; wider ones (K or V) are refused with
/// the limit and the model's widths in the message.
#[test]
fn heads_up_to_512_are_taken_and_wider_refused() {
    let g = gpu();
    let geo = |hd_k, hd_v| KvGeometry {
        n_layers: 1,
        n_kv_heads: 2,
        head_dim_k: hd_k,
        head_dim_v: hd_v,
        kv_type: KvType::F16,
        n_blocks: 4,
    };
    assert!(g.new_kv_cache(geo(512, 512)).is_ok());
    for (k, v) in [(576, 512), (512, 640), (1024, 1024)] {
        let err = g
            .new_kv_cache(geo(k, v))
            .err()
            .unwrap_or_else(|| panic!("heads of {k} (K) and {v} (V) refused"));
        let msg = err.to_string();
        assert!(
            msg.contains("512") && msg.contains(&k.to_string()) && msg.contains(&v.to_string()),
            "{msg}"
        );
    }
}
