// The small ops of a block: RMSNorm, RoPE, gating, adds, products, unary
// functions, row selection and column slices. Activations are row-major
// rows x cols f32.

// RMSNorm over groups of `n` values, times `w` unless it is null (ggml's
// rms_norm alone): one block per group.
extern "C" __global__ void rms_norm(const float* x, const float* w, float* out, int n, float eps) {
    __shared__ float scratch[32];
    const float* g = x + (size_t)blockIdx.x * n;
    float* o = out + (size_t)blockIdx.x * n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += g[i] * g[i];
    ss = block_sum(ss, scratch);
    const float scale = rsqrtf(ss / n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) o[i] = w ? g[i] * scale * w[i] : g[i] * scale;
}

extern "C" __global__ void add_assign(float* x, const float* y, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

// x[r][c] += bias[c]
extern "C" __global__ void add_bias(float* x, const float* bias, size_t n, int cols) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += bias[i % cols];
}

extern "C" __global__ void gated_silu(const float* gate, const float* up, float* out, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

// GELU, tanh approximation, as ggml's CPU backend computes it (and so the
// CPU backend here): looked up by the f16-rounded input in a table of
// f16-rounded outputs, i.e. f16(gelu(f16(g))); exact outside [-10, 10].
__device__ __forceinline__ float gelu_f16(float g) {
    if (g <= -10.0f) return 0.0f;
    if (g >= 10.0f) return g;
    const float x = h2f(f2h(g));
    const float inner = 0.7978845608028654f * x * fmaf(0.044715f * x, x, 1.0f);
    return h2f(f2h(0.5f * x * (1.0f + tanhf(inner))));
}

extern "C" __global__ void gated_gelu(const float* gate, const float* up, float* out, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = gelu_f16(gate[i]) * up[i];
}

// gpt-oss's clamped SwiGLU (ggml's swiglu_oai, alpha 1.702, limit 7).
extern "C" __global__ void gated_swiglu_oai(const float* gate, const float* up, float* out, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const float alpha = 1.702f, limit = 7.0f;
        const float x = fminf(gate[i], limit);
        const float y = fminf(fmaxf(up[i], -limit), limit);
        out[i] = x / (1.0f + expf(alpha * -x)) * (y + 1.0f);
    }
}

// x[r][c] *= the attention temperature of row r's position (Ministral-3),
// as attn_temperature_scales computes it on the host (llama.cpp's types:
// the floor in f32, the log and the multiply-add in f64). The scale comes
// from the positions on the device, so a recorded graph can replay it.
extern "C" __global__ void attn_temperature(float* x, const u32* positions, size_t n, int cols, float floor_scale,
                                            float temp_scale) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float floored = floorf((float)positions[i / cols] / floor_scale);
    x[i] *= (float)fma(log((double)floored + 1.0), (double)temp_scale, 1.0);
}

// Rotates the first `dims` values of every head of every row. Normal style
// pairs (2i, 2i+1); NeoX pairs (i, i + dims/2). theta = freq_scale * (pos *
// theta_scale^i / freq_factors[i]). One thread per pair.
// With `yarn`, ggml's rope_yarn: on the ramp between the correction dims
// (corr_low, corr_high) theta mixes the unscaled (extrapolated) value in by
// ext_factor, and cos and sin are multiplied by `mscale` (attn_factor,
// times 1 + 0.1 ln(1/freq_scale) when ext_factor != 0: computed by the host).
extern "C" __global__ void rope(float* x, const u32* positions, int rows, int n_heads, int head_dim, int dims,
                                float theta_scale, float freq_scale, const float* freq_factors, int neox, int yarn,
                                float ext_factor, float mscale, float corr_low, float corr_high) {
    const int pairs = dims / 2;
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * n_heads * pairs) return;
    const int p = i % pairs;
    const size_t head = i / pairs;
    const int row = head / n_heads;
    float* h = x + head * head_dim;
    // theta as ggml-cpu builds it: pos times theta_scale (base^(-2/dims),
    // from the host's powf: the GPU's powf is not correctly rounded, and
    // at position 70000 its last bit moved theta by 4e-3 rad) p times.
    float theta_extrap = (float)positions[row];
    for (int k = 0; k < p; k++) theta_extrap *= theta_scale;
    if (freq_factors) theta_extrap /= freq_factors[p];
    const float theta_interp = freq_scale * theta_extrap;
    float s, c;
    if (!yarn) {
        sincosf(theta_interp, &s, &c);
    } else {
        float theta = theta_interp;
        if (ext_factor != 0.0f) {
            const float y = (p - corr_low) / fmaxf(0.001f, corr_high - corr_low);
            const float ramp_mix = (1.0f - fminf(1.0f, fmaxf(0.0f, y))) * ext_factor;
            theta = fmaf(theta_interp, 1.0f - ramp_mix, theta_extrap * ramp_mix);
        }
        sincosf(theta, &s, &c);
        s *= mscale;
        c *= mscale;
    }
    const int a = neox ? p : 2 * p;
    const int b = neox ? p + pairs : 2 * p + 1;
    const float x0 = h[a], x1 = h[b];
    h[a] = x0 * c - x1 * s;
    h[b] = x0 * s + x1 * c;
}

// out[i] = x[rows[i]]: one block per output row.
extern "C" __global__ void select_rows(const float* x, const u32* rows, float* out, int cols) {
    const float* src = x + (size_t)rows[blockIdx.x] * cols;
    float* dst = out + (size_t)blockIdx.x * cols;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) dst[i] = src[i];
}

// Dequantized f16 copies of f32 activations (for the prompt path's GEMM).
extern "C" __global__ void f32_to_f16(const float* x, u16* out, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = f2h(x[i]);
}

// x = f(x) as ggml-cpu computes f (Backend's Unary, in its order: sigmoid,
// softplus, silu, tanh, gelu).
extern "C" __global__ void unary(float* x, size_t n, int f) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float v = x[i];
    switch (f) {
        case 0: x[i] = 1.0f / (1.0f + expf(-v)); break;
        case 1: x[i] = v > 20.0f ? v : logf(1.0f + expf(v)); break;
        case 2: x[i] = v / (1.0f + expf(-v)); break;
        case 3: x[i] = tanhf(v); break;
        default: x[i] = gelu_f16(v); break;
    }
}

// x *= c (ggml_scale).
extern "C" __global__ void scale(float* x, size_t n, float c) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= c;
}

// x[i] *= y[(i / div) % len]: a product of the same shape (div 1, len n),
// one value per row (div cols) or a vector repeated along rows (div 1).
extern "C" __global__ void mul_broadcast(float* x, const float* y, size_t n, size_t div, size_t len) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= y[(i / div) % len];
}

// out[r][c] = x[r][start + c] for c < len.
extern "C" __global__ void columns(const float* x, float* out, size_t n, int cols, int start, int len) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = x[(i / len) * cols + start + i % len];
}
