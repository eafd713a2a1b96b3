//! The CPU DeltaNet ops against ggml's own (`ggml_ssm_conv`,
//! `ggml_gated_delta_net` on llama.cpp's CPU backend), bit for bit, on the
//! inputs `scripts/ggml-delta-net-check.c` writes (see its header for how to
//! build and run it). Ignored by default: it needs a llama.cpp build.
//! `STRATA_GGML_DELTA_NET` names the folder the script wrote.
//!
//! Bit-equality holds where the reference llama.cpp was built as ours is
//! (GCC, `-march=native` on an AVX-512 CPU: fused multiply-adds,
//! `ggml_vec_dot_f32`'s 16-lane path, glibc `expf`).

use std::path::PathBuf;

use strata_kernels::cpu::delta_net::{gated_delta_net, ssm_conv, DeltaNetInput, DeltaNetShape};

fn folder() -> PathBuf {
    PathBuf::from(std::env::var("STRATA_GGML_DELTA_NET").expect("set STRATA_GGML_DELTA_NET"))
}

/// Reads a file of i32 header values then f32 arrays.
struct Reader {
    bytes: Vec<u8>,
    at: usize,
}

impl Reader {
    fn open(name: &str) -> Reader {
        let path = folder().join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Reader { bytes, at: 0 }
    }
    fn word(&mut self) -> [u8; 4] {
        let w = self.bytes[self.at..self.at + 4].try_into().unwrap();
        self.at += 4;
        w
    }
    fn usize(&mut self) -> usize {
        i32::from_le_bytes(self.word()) as usize
    }
    fn f32s(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| f32::from_le_bytes(self.word())).collect()
    }
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

#[test]
#[ignore = "needs STRATA_GGML_DELTA_NET from scripts/ggml-delta-net-check.c"]
fn ssm_conv_equals_ggml_bit_for_bit() {
    for d in [4, 7] {
        conv_case(&format!("conv-{d}.bin"));
    }
}

fn conv_case(name: &str) {
    let mut r = Reader::open(name);
    let (channels, d_conv, n_tokens) = (r.usize(), r.usize(), r.usize());
    let x = r.f32s(n_tokens * channels);
    let mut state = r.f32s((d_conv - 1) * channels);
    let w = r.f32s(channels * d_conv);
    let want_y = r.f32s(n_tokens * channels);
    let want_state = r.f32s((d_conv - 1) * channels);
    let y = ssm_conv(&x, n_tokens, channels, &mut state, &w, d_conv).unwrap();
    assert_eq!(bits(&y), bits(&want_y), "{name}: output");
    assert_eq!(bits(&state), bits(&want_state), "{name}: state");
}

#[test]
#[ignore = "needs STRATA_GGML_DELTA_NET from scripts/ggml-delta-net-check.c"]
fn gated_delta_net_equals_ggml_bit_for_bit() {
    for head_dim in [16, 32, 78, 128] {
        let mut r = Reader::open(&format!("dn-{head_dim}.bin"));
        let (s, n_k_heads, n_v_heads, t) = (r.usize(), r.usize(), r.usize(), r.usize());
        let shape = DeltaNetShape {
            head_dim: s,
            n_k_heads,
            n_v_heads,
        };
        let q = r.f32s(t * n_k_heads * s);
        let k = r.f32s(t * n_k_heads * s);
        let v = r.f32s(t * n_v_heads * s);
        let g = r.f32s(t * n_v_heads);
        let beta = r.f32s(t * n_v_heads);
        let mut state = r.f32s(shape.state_len());
        let want_o = r.f32s(t * n_v_heads * s);
        let want_state = r.f32s(shape.state_len());
        let input = DeltaNetInput {
            q: &q,
            k: &k,
            v: &v,
            g: &g,
            beta: &beta,
            n_tokens: t,
        };
        let o = gated_delta_net(shape, input, &mut state).unwrap();
        let differing = bits(&o)
            .iter()
            .zip(bits(&want_o))
            .filter(|(a, b)| *a != b)
            .count();
        assert_eq!(
            differing,
            0,
            "{shape:?}: {differing} of {} outputs differ",
            o.len()
        );
        assert_eq!(bits(&state), bits(&want_state), "{shape:?}: state");
    }
}
