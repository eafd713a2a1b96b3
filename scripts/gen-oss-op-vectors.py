#!/usr/bin/env python3
"""Expected values for kernels/tests/oss_ops_reference.rs, computed from
ggml's formulas independently of strata's kernels (numpy, f32 where ggml
uses f32; a fused multiply-add as the f64 result rounded to f32).

Follows llama.cpp's ggml/src/ggml.c (ggml_rope_yarn_corr_dims),
ggml/src/ggml-cpu/ops.cpp (rope_yarn, rope_yarn_ramp,
ggml_compute_forward_swiglu_oai_f32, flash_attn_ext_f16_one_chunk's sinks),
src/llama-context.cpp (yarn_attn_factor) and src/llama-graph.cpp
(llm_graph_input_attn_temp::set_input).

Run: python3 scripts/gen-oss-op-vectors.py  (prints Rust constants)
"""
import math

import numpy as np

f32 = np.float32


def fma(a, b, c):
    return f32(float(a) * float(b) + float(c))


def corr_dims(n_dims, n_ctx_orig, freq_base, beta_fast, beta_slow):
    def corr_dim(n_rot):
        inner = f32(n_ctx_orig) / (f32(n_rot) * f32(2) * f32(math.pi))
        return f32(n_dims) * f32(math.log(inner)) / (f32(2) * f32(math.log(f32(freq_base))))
    start = math.floor(corr_dim(beta_fast))
    end = math.ceil(corr_dim(beta_slow))
    return [f32(max(0, start)), f32(min(n_dims - 1, end))]


def yarn_attn_factor(factor, log_mul, rope_attn_factor=1.0):
    def get_mscale(scale, mscale):
        return f32(1) if scale <= 1 else fma(f32(0.1) * f32(mscale), f32(math.log(scale)), f32(1))
    factor = f32(1) / (f32(1) / f32(factor))
    if log_mul != 0:
        a = get_mscale(factor, 1.0) / get_mscale(factor, log_mul)
    else:
        a = get_mscale(factor, 1.0)
    a = f32(a) * (f32(1) / fma(f32(0.1), f32(math.log(factor)), f32(1)))
    return f32(a * f32(rope_attn_factor))


def rope_yarn_cache(pos, n_dims, freq_base, freq_scale, ext_factor, attn_factor, corr):
    """(cos, sin) per pair as ggml_rope_cache_init + rope_yarn."""
    theta_scale = f32(f32(freq_base) ** f32(-2.0 / n_dims))
    theta = f32(pos)
    out = []
    for i in range(n_dims // 2):
        theta_extrap = theta
        theta_interp = f32(freq_scale) * theta_extrap
        th = theta_interp
        mscale = f32(attn_factor)
        if ext_factor != 0:
            y = (f32(i) - corr[0]) / max(f32(0.001), corr[1] - corr[0])
            ramp = f32(1) - min(f32(1), max(f32(0), f32(y)))
            ramp_mix = f32(ramp * f32(ext_factor))
            th = fma(theta_interp, f32(1) - ramp_mix, theta_extrap * ramp_mix)
            mscale = f32(mscale * fma(f32(0.1), f32(math.log(f32(1) / f32(freq_scale))), f32(1)))
        out.append((f32(f32(math.cos(th)) * mscale), f32(f32(math.sin(th)) * mscale)))
        theta = f32(theta * theta_scale)
    return out


def swiglu_oai(g, u, alpha=1.702, limit=7.0):
    g, u, alpha, limit = f32(g), f32(u), f32(alpha), f32(limit)
    x = limit if limit < g else g
    y = -limit if u < -limit else (limit if limit < u else u)
    out_glu = x / (f32(1) + f32(math.exp(alpha * -x)))
    return f32(out_glu * (y + f32(1)))


def attention_with_sink(q, ks, vs, scale, sink):
    """One query head over keys 0..n with a sink logit: softmax in f64 over
    f16-rounded Q, K, V (the CPU path's f16 accumulation is within 1e-3)."""
    h = lambda v: np.asarray(v, dtype=np.float16).astype(np.float64)
    q, ks, vs = h(q), [h(k) for k in ks], [h(v) for v in vs]
    s = [float(q @ k) * scale for k in ks]
    m = max(s + [sink])
    e = [math.exp(x - m) for x in s]
    den = sum(e) + math.exp(sink - m)
    return [sum(e[j] * vs[j][d] for j in range(len(ks))) / den for d in range(len(vs[0]))]


def attn_temperature(pos, floor_scale, temp_scale):
    floored = math.floor(f32(pos) / f32(floor_scale))
    return f32(math.log(float(floored) + 1.0) * float(f32(temp_scale)) + 1.0)


def rust(name, vals):
    body = ", ".join(repr(float(v)) for v in vals)
    print(f"const {name}: [f32; {len(vals)}] = [{body}];")


if __name__ == "__main__":
    # gpt-oss: head_dim 64, base 150000, factor 32, original context 4096.
    dims, base, factor, n_ctx_orig = 64, 150000.0, 32.0, 4096
    corr = corr_dims(dims, n_ctx_orig, base, 32.0, 1.0)
    rust("GPT_OSS_CORR_DIMS", corr)
    af = yarn_attn_factor(factor, 0.0)
    rust("GPT_OSS_ATTN_FACTOR", [af])
    # Ministral-3 style: factor 16, yarn_log_multiplier 1.
    rust("MISTRAL3_ATTN_FACTOR", [yarn_attn_factor(16.0, 1.0)])
    pairs = [0, 5, 10, 15, 20, 31]
    positions = [1, 100, 4097]
    cos, sin = [], []
    for p in positions:
        cache = rope_yarn_cache(p, dims, base, 1.0 / factor, 1.0, af, corr)
        for i in pairs:
            cos.append(cache[i][0])
            sin.append(cache[i][1])
    rust("YARN_COS", cos)
    rust("YARN_SIN", sin)

    g = [-10.0, -7.5, -1.0, -0.25, 0.0, 0.5, 3.0, 6.99, 7.0, 8.0, 20.0]
    u = [-9.0, -7.0, -0.5, 0.0, 0.3, 1.0, 2.0, 6.5, 7.0, 7.5, 100.0]
    rust("SWIGLU_OAI", [swiglu_oai(a, b) for a, b in zip(g, u)])

    # Two tokens of one sequence, 2 query heads sharing 1 KV head, dim 4.
    q = [[[0.5, -1.0, 0.25, 2.0], [1.5, 0.5, -0.75, 0.125]],
         [[-0.5, 1.0, 1.0, 0.5], [0.25, -2.0, 0.5, 1.0]]]
    k = [[1.0, 0.5, -0.5, 0.25], [-0.25, 1.5, 0.75, -1.0]]
    v = [[0.5, -1.0, 2.0, 0.25], [1.5, 0.75, -0.5, -2.0]]
    sinks = [3.0, -1.5]  # head 0 above every score, head 1 below
    out = []
    for t in range(2):
        for h in range(2):
            out += attention_with_sink(q[t][h], k[:t + 1], v[:t + 1], 0.5, sinks[h])
    rust("SINK_ATTENTION", out)

    pos = [0, 1, 16383, 16384, 50000, 1000000]
    rust("ATTN_TEMPERATURE", [attn_temperature(p, 16384, 0.1) for p in pos])
