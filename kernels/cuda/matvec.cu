// Matrix-vector products for decode batches (1..MAX_BATCH tokens), the
// activation quantizer they read, and embedding lookups. One warp per weight
// row reads the row once for every token of the batch.

#define MAX_BATCH 8

// x: tokens x cols f32 -> tokens x (cols/32) ActChunks. One thread per chunk.
extern "C" __global__ void quantize_act(const float* x, ActChunk* out, int tokens, int cols) {
    const int chunks = cols / 32;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= tokens * chunks) return;
    const float* src = x + (size_t)(i / chunks) * cols + (size_t)(i % chunks) * 32;
    float amax = 0.0f;
#pragma unroll
    for (int e = 0; e < 32; e++) amax = fmaxf(amax, fabsf(src[e]));
    const float d = amax / 127.0f;
    const float id = d > 0.0f ? 1.0f / d : 0.0f;
    ActChunk a;
    a.d = d;
#pragma unroll
    for (int w = 0; w < 8; w++) {
        int b[4];
#pragma unroll
        for (int e = 0; e < 4; e++) b[e] = __float2int_rn(src[4 * w + e] * id);
        a.q[w] = pack4(b[0], b[1], b[2], b[3]);
    }
    out[i] = a;
}

// out[t * rows + r] = W[r] . x[t] for t < tokens <= MAX_BATCH.
template <int T>
__device__ void mmvq(const u8* w, size_t row_bytes, int rows, int cols, const ActChunk* x, int tokens, float* out) {
    const int warps = blockDim.x / WARP;
    const int row = blockIdx.x * warps + threadIdx.x / WARP;
    const int lane = threadIdx.x % WARP;
    if (row >= rows) return;
    constexpr int SUBS = Block<T>::ELEMS / 32;
    const int chunks = cols / 32;
    const u8* r = w + (size_t)row * row_bytes;
    float acc[MAX_BATCH];
#pragma unroll
    for (int t = 0; t < MAX_BATCH; t++) acc[t] = 0.0f;
    for (int c = lane; c < chunks; c += WARP) {
        Chunk k;
        unpack<T>(r + (size_t)(c / SUBS) * Block<T>::BYTES, c % SUBS, k);
#pragma unroll
        for (int t = 0; t < MAX_BATCH; t++)
            if (t < tokens) acc[t] += chunk_dot(k, x[(size_t)t * chunks + c]);
    }
#pragma unroll
    for (int t = 0; t < MAX_BATCH; t++) {
        if (t < tokens) {
            const float s = warp_sum(acc[t]);
            if (lane == 0) out[(size_t)t * rows + row] = s;
        }
    }
}

// Unquantized weights: f32 activations, no int8 step.
template <int T>
__device__ void mmv_float(const u8* w, size_t row_bytes, int rows, int cols, const float* x, int tokens, float* out) {
    const int warps = blockDim.x / WARP;
    const int row = blockIdx.x * warps + threadIdx.x / WARP;
    const int lane = threadIdx.x % WARP;
    if (row >= rows) return;
    const u8* r = w + (size_t)row * row_bytes;
    float acc[MAX_BATCH];
#pragma unroll
    for (int t = 0; t < MAX_BATCH; t++) acc[t] = 0.0f;
    for (int i = lane; i < cols; i += WARP) {
        const float wi = float_weight<T>(r, i);
#pragma unroll
        for (int t = 0; t < MAX_BATCH; t++)
            if (t < tokens) acc[t] += wi * x[(size_t)t * cols + i];
    }
#pragma unroll
    for (int t = 0; t < MAX_BATCH; t++) {
        if (t < tokens) {
            const float s = warp_sum(acc[t]);
            if (lane == 0) out[(size_t)t * rows + row] = s;
        }
    }
}

// out[t] = table[ids[t]] * scale: one block per token.
template <int T>
__device__ void embed_q(const u8* table, size_t row_bytes, const u32* ids, int cols, float scale, float* out) {
    constexpr int SUBS = Block<T>::ELEMS / 32;
    const u8* r = table + (size_t)ids[blockIdx.x] * row_bytes;
    float* o = out + (size_t)blockIdx.x * cols;
    for (int c = threadIdx.x; c < cols / 32; c += blockDim.x) {
        Chunk k;
        unpack<T>(r + (size_t)(c / SUBS) * Block<T>::BYTES, c % SUBS, k);
#pragma unroll
        for (int e = 0; e < 32; e++) o[32 * c + e] = chunk_weight(k, e) * scale;
    }
}

template <int T>
__device__ void embed_f(const u8* table, size_t row_bytes, const u32* ids, int cols, float scale, float* out) {
    const u8* r = table + (size_t)ids[blockIdx.x] * row_bytes;
    float* o = out + (size_t)blockIdx.x * cols;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) o[i] = float_weight<T>(r, i) * scale;
}

#define QUANT_KERNELS(name, T)                                                                              \
    extern "C" __global__ void mmvq_##name(const u8* w, size_t row_bytes, int rows, int cols,               \
                                           const ActChunk* x, int tokens, float* out) {                     \
        mmvq<T>(w, row_bytes, rows, cols, x, tokens, out);                                                  \
    }                                                                                                       \
    extern "C" __global__ void embed_##name(const u8* t, size_t row_bytes, const u32* ids, int cols,         \
                                            float scale, float* out) {                                      \
        embed_q<T>(t, row_bytes, ids, cols, scale, out);                                                    \
    }

#define FLOAT_KERNELS(name, T)                                                                              \
    extern "C" __global__ void mmv_##name(const u8* w, size_t row_bytes, int rows, int cols, const float* x, \
                                          int tokens, float* out) {                                         \
        mmv_float<T>(w, row_bytes, rows, cols, x, tokens, out);                                             \
    }                                                                                                       \
    extern "C" __global__ void embed_##name(const u8* t, size_t row_bytes, const u32* ids, int cols,         \
                                            float scale, float* out) {                                      \
        embed_f<T>(t, row_bytes, ids, cols, scale, out);                                                    \
    }

QUANT_KERNELS(q4_0, T_Q4_0)
QUANT_KERNELS(q4_1, T_Q4_1)
QUANT_KERNELS(q5_0, T_Q5_0)
QUANT_KERNELS(q5_1, T_Q5_1)
QUANT_KERNELS(q8_0, T_Q8_0)
QUANT_KERNELS(q2_k, T_Q2_K)
QUANT_KERNELS(q3_k, T_Q3_K)
QUANT_KERNELS(q4_k, T_Q4_K)
QUANT_KERNELS(q5_k, T_Q5_K)
QUANT_KERNELS(q6_k, T_Q6_K)
QUANT_KERNELS(q8_k, T_Q8_K)
QUANT_KERNELS(mxfp4, T_MXFP4)
FLOAT_KERNELS(f32, T_F32)
FLOAT_KERNELS(f16, T_F16)
FLOAT_KERNELS(bf16, T_BF16)

// Matmul by expert id (ggml's mul_mat_id): output row s = first + blockIdx.y
// is expert ids[s] (rows [ids[s] * rows, (ids[s] + 1) * rows) of the stacked
// weight) times activation row s / x_div (x_div = n_used when every slot of a
// token reads the token's row, 1 when each slot has its own). The ids are
// checked on the host.
#define QUANT_ID_KERNEL(name, T)                                                                          \
    extern "C" __global__ void mmvq_id_##name(const u8* w, size_t row_bytes, int rows, int cols,          \
                                              const ActChunk* x, const u32* ids, int x_div, int first,    \
                                              float* out) {                                               \
        const size_t s = (size_t)first + blockIdx.y;                                                      \
        mmvq<T>(w + (size_t)ids[s] * rows * row_bytes, row_bytes, rows, cols,                             \
                x + (s / x_div) * (cols / 32), 1, out + s * rows);                                        \
    }

#define FLOAT_ID_KERNEL(name, T)                                                                          \
    extern "C" __global__ void mmv_id_##name(const u8* w, size_t row_bytes, int rows, int cols,           \
                                             const float* x, const u32* ids, int x_div, int first,        \
                                             float* out) {                                                \
        const size_t s = (size_t)first + blockIdx.y;                                                      \
        mmv_float<T>(w + (size_t)ids[s] * rows * row_bytes, row_bytes, rows, cols,                        \
                     x + (s / x_div) * cols, 1, out + s * rows);                                          \
    }

QUANT_ID_KERNEL(q4_0, T_Q4_0)
QUANT_ID_KERNEL(q4_1, T_Q4_1)
QUANT_ID_KERNEL(q5_0, T_Q5_0)
QUANT_ID_KERNEL(q5_1, T_Q5_1)
QUANT_ID_KERNEL(q8_0, T_Q8_0)
QUANT_ID_KERNEL(q2_k, T_Q2_K)
QUANT_ID_KERNEL(q3_k, T_Q3_K)
QUANT_ID_KERNEL(q4_k, T_Q4_K)
QUANT_ID_KERNEL(q5_k, T_Q5_K)
QUANT_ID_KERNEL(q6_k, T_Q6_K)
QUANT_ID_KERNEL(q8_k, T_Q8_K)
QUANT_ID_KERNEL(mxfp4, T_MXFP4)
FLOAT_ID_KERNEL(f32, T_F32)
FLOAT_ID_KERNEL(f16, T_F16)
FLOAT_ID_KERNEL(bf16, T_BF16)
