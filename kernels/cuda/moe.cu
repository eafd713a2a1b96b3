// Mixture-of-experts ops besides the matmul by expert id (matvec.cu's
// mmvq_id_* / mmv_id_*): the per-expert bias and the weighted sum of each
// token's expert outputs. Expert ids are checked on the host before launch.

// x * y rounded once, never fused into a later add (ggml multiplies and adds
// in separate ops; NVRTC would otherwise contract `a * b + c`).
#ifdef STRATA_HOST
static inline float mul_rn(float a, float b) { return a * b; }
#else
__device__ __forceinline__ float mul_rn(float a, float b) {
    float r;
    asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
#endif

// ggml's add_id: x[r][c] += bias[ids[r]][c], bias rows of `cols` f32.
extern "C" __global__ void add_id(float* x, const float* bias, const u32* ids, size_t n, int cols) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += bias[(size_t)ids[i / cols] * cols + i % cols];
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
