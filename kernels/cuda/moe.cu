// Mixture-of-experts ops besides the matmul by expert id (matvec.cu's
// mmvq_id_* / mmv_id_*): the router, the per-expert bias and the weighted
// sum of each token's expert outputs. The router's ids are valid by
// construction; ids given on the host are checked there.

// ggml's add_id: x[r][c] += bias[ids[r]][c], bias rows of `cols` f32.
extern "C" __global__ void add_id(float* x, const float* bias, const u32* ids, size_t n, int cols) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += bias[(size_t)ids[i / cols] * cols + i % cols];
}

// x[r][c] *= scale[ids[r]]: each expert's output scale (llama.cpp's
// build_lora_mm_id with w_s: ggml_mul by the gathered scale).
extern "C" __global__ void mul_id(float* x, const float* scale, const u32* ids, size_t n, int cols) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= scale[ids[i / cols]];
}

// out[t][c] = sum over j of y[t * n_used + j][c] * w[t * n_used + j]: each
// product rounded, then added from j = 0 on (llama.cpp's ggml_mul, then its
// chain of ggml_add). One thread per output value.
extern "C" __global__ void moe_combine(const float* y, const float* w, float* out, size_t n, int cols, int n_used) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const size_t t = i / cols, c = i % cols;
    const size_t s0 = t * n_used;
    float acc = mul_rn(y[s0 * cols + c], w[s0]);
    for (int j = 1; j < n_used; j++) acc += mul_rn(y[(s0 + j) * cols + c], w[s0 + j]);
    out[i] = acc;
}

// The router, one token per block of one warp, on the device so that a MoE
// layer needs no copy to the host: moe_route.rs's steps (gating, the
// n_used most probable experts with ties to the lower id, the softmax of
// the chosen logits for gpt-oss, normalisation, scale), with CUDA's expf
// and sums in warp order rather than ggml-cpu's: a near-tie may pick the
// other expert. gating: 0 softmax, 1 softmax over the chosen logits,
// 2 sigmoid. Limits are checked on the host.
#define ROUTE_MAX_EXPERTS 1024
#define ROUTE_MAX_USED 32
#define ROUTE_NORM_MIN_SUM 6.103515625e-5f

extern "C" __global__ void moe_route(const float* logits, u32* ids, float* weights, int n_expert, int n_used,
                                     int gating, int norm, float scale) {
    __shared__ float p[ROUTE_MAX_EXPERTS];
    __shared__ unsigned char taken[ROUTE_MAX_EXPERTS];
    __shared__ int chosen[ROUTE_MAX_USED];
    const int lane = threadIdx.x;
    const float* x = logits + (size_t)blockIdx.x * n_expert;
    if (gating == 0) {
        float m = NEG_INF;
        for (int e = lane; e < n_expert; e += WARP) m = fmaxf(m, x[e]);
        m = warp_max(m);
        float s = 0.0f;
        for (int e = lane; e < n_expert; e += WARP) {
            p[e] = expf(x[e] - m);
            s += p[e];
        }
        const float inv = 1.0f / warp_sum(s);
        for (int e = lane; e < n_expert; e += WARP) p[e] *= inv;
    } else {
        for (int e = lane; e < n_expert; e += WARP) p[e] = gating == 2 ? 1.0f / (1.0f + expf(-x[e])) : x[e];
    }
    for (int e = lane; e < n_expert; e += WARP) taken[e] = 0;
    __syncthreads();
    for (int j = 0; j < n_used; j++) {
        // Each lane's best untaken expert, then the warp's (ties: lower id).
        float best = NEG_INF;
        int at = -1;
        for (int e = lane; e < n_expert; e += WARP)
            if (!taken[e] && (at < 0 || p[e] > best)) {
                best = p[e];
                at = e;
            }
        for (int o = WARP / 2; o > 0; o >>= 1) {
            const float ob = __shfl_xor_sync(FULL_MASK, best, o);
            const int oat = __shfl_xor_sync(FULL_MASK, at, o);
            if (oat >= 0 && (at < 0 || ob > best || (ob == best && oat < at))) {
                best = ob;
                at = oat;
            }
        }
        if (lane == 0) {
            chosen[j] = at;
            taken[at] = 1;
        }
        __syncthreads();
    }
    if (lane != 0) return;
    float w[ROUTE_MAX_USED];
    for (int j = 0; j < n_used; j++) w[j] = p[chosen[j]];
    if (gating == 1) {
        float m = NEG_INF;
        for (int j = 0; j < n_used; j++) m = fmaxf(m, w[j]);
        double s = 0.0;
        for (int j = 0; j < n_used; j++) {
            w[j] = expf(w[j] - m);
            s += w[j];
        }
        const float inv = (float)(1.0 / s);
        for (int j = 0; j < n_used; j++) w[j] *= inv;
    }
    if (norm) {
        double s = 0.0;
        for (int j = 0; j < n_used; j++) s += w[j];
        const float sum = fmaxf((float)s, ROUTE_NORM_MIN_SUM);
        for (int j = 0; j < n_used; j++) w[j] /= sum;
    }
    const bool scaled = scale != 0.0f && scale != 1.0f;
    const size_t first = (size_t)blockIdx.x * n_used;
    for (int j = 0; j < n_used; j++) {
        ids[first + j] = (u32)chosen[j];
        weights[first + j] = scaled ? w[j] * scale : w[j];
    }
}
