// Matrix-vector products for decode batches (1..MAX_BATCH tokens), the
// activation quantizer they read, and embedding lookups.
//
// The work is laid out as llama.cpp's MMVQ lays it out: a block of up to
// MAX_WARPS warps computes ROWS_PER_BLOCK output rows for every token of the
// batch. Its threads split the rows' 32-weight chunks (thread i takes chunks
// i, i + blockDim.x, ...), so each load instruction of a warp reads one
// contiguous span of a row. A thread unpacks its chunk of each row with the
// widest loads the block layout allows (quant.cuh), then loads each token's
// activation chunk once (two 128-bit loads) and dots it with every row's
// chunk: activation loads and their sums are shared by ROWS_PER_BLOCK rows.
// The partial sums meet by warp shuffles, then across warps in shared memory.
//
// MAX_BATCH stays 8 (llama.cpp's MMVQ_MAX_BATCH_SIZE): the weight is read
// once per 8 tokens, and past 8 the dp4a work per weight byte no longer
// hides under the memory time; longer batches are a tiled (tensor-core)
// GEMM's job. The host launches longer batches 8 tokens at a time.

#define MAX_BATCH 8
// Output rows per block (the host's ROWS_PER_BLOCK).
#define ROWS_PER_BLOCK 2
// Most warps per block (the host's WARPS_PER_ROW_BLOCK). Declared to the
// compiler, so a larger launch fails instead of overrunning store_rows'
// shared memory.
#define MAX_WARPS 4
#define MATVEC_BOUNDS __launch_bounds__(MAX_WARPS * WARP)

// Quantized activations, for n = tokens * (cols / 32) chunks: n x 32 int8
// levels (chunk i at byte 32 i, 16-byte aligned: two 128-bit loads), then n
// f32 scales (x = d * level), in one buffer of 36 bytes a chunk.
//
// x: tokens x cols f32 (cols a multiple of 32). One thread per chunk.
extern "C" __global__ void quantize_act(const float* x, u8* q, float* d, int tokens, int cols) {
    const int chunks = cols / 32;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= tokens * chunks) return;
    const u8* src = (const u8*)(x + (size_t)(i / chunks) * cols + (size_t)(i % chunks) * 32);
    u32 v[32];
#pragma unroll
    for (int w = 0; w < 8; w++) ld128(src + 16 * w, v + 4 * w);
    float amax = 0.0f;
#pragma unroll
    for (int e = 0; e < 32; e++) amax = fmaxf(amax, fabsf(__uint_as_float(v[e])));
    const float scale = amax / 127.0f;
    const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
    u32* dst = (u32*)(q + (size_t)i * 32);
#pragma unroll
    for (int w = 0; w < 8; w++) {
        int b[4];
#pragma unroll
        for (int e = 0; e < 4; e++) b[e] = __float2int_rn(__uint_as_float(v[4 * w + e]) * inv);
        dst[w] = pack4(b[0], b[1], b[2], b[3]);
    }
    d[i] = scale;
}

// Sums each row's per-thread partials over the block and writes
// out[t * rows + row0 + r] for t < tokens, row0 + r < rows. Every thread of
// the block calls it (a __syncthreads inside).
__device__ __forceinline__ void store_rows(float (&acc)[ROWS_PER_BLOCK][MAX_BATCH], int row0, int rows, int tokens,
                                           float* out) {
    __shared__ float partial[MAX_WARPS][ROWS_PER_BLOCK * MAX_BATCH];
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
#pragma unroll
    for (int r = 0; r < ROWS_PER_BLOCK; r++) {
#pragma unroll
        for (int t = 0; t < MAX_BATCH; t++) {
            if (t < tokens) {
                const float s = warp_sum(acc[r][t]);
                if (lane == 0) partial[warp][r * MAX_BATCH + t] = s;
            }
        }
    }
    __syncthreads();
    const int i = threadIdx.x, r = i / MAX_BATCH, t = i % MAX_BATCH;
    if (i < ROWS_PER_BLOCK * MAX_BATCH && t < tokens && row0 + r < rows) {
        float s = 0.0f;
        for (int w = 0; w < (int)blockDim.x / WARP; w++) s += partial[w][i];
        out[(size_t)t * rows + row0 + r] = s;
    }
}

// The block's rows. Past the last row, a block repeats the last row (read,
// never written), so no lane diverges and no read leaves the weight.
__device__ __forceinline__ void block_rows(const u8* w, size_t row_bytes, int rows, const u8* (&r)[ROWS_PER_BLOCK],
                                           int& row0) {
    row0 = blockIdx.x * ROWS_PER_BLOCK;
#pragma unroll
    for (int i = 0; i < ROWS_PER_BLOCK; i++) r[i] = w + (size_t)min(row0 + i, rows - 1) * row_bytes;
}

// out[t * rows + r] = W[r] . x[t] for t < tokens <= MAX_BATCH; xq / xd the
// batch's activation levels and scales (see quantize_act).
template <int T>
__device__ void mmvq(const u8* w, size_t row_bytes, int rows, int cols, const u8* xq, const float* xd, int tokens,
                     float* out) {
    constexpr int SUBS = Block<T>::ELEMS / 32;
    const int chunks = cols / 32;
    const u8* r[ROWS_PER_BLOCK];
    int row0;
    block_rows(w, row_bytes, rows, r, row0);
    float acc[ROWS_PER_BLOCK][MAX_BATCH] = {};
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
        const size_t block = (size_t)(c / SUBS) * Block<T>::BYTES;
        // Every row's loads first: ROWS_PER_BLOCK independent streams in flight.
        Chunk k[ROWS_PER_BLOCK];
#pragma unroll
        for (int i = 0; i < ROWS_PER_BLOCK; i++) unpack<T>(r[i] + block, c % SUBS, k[i]);
#pragma unroll
        for (int t = 0; t < MAX_BATCH; t++) {
            if (t < tokens) {
                const size_t a = (size_t)t * chunks + c;
                i32 q[8];
                ld128(xq + 32 * a, (u32*)q);
                ld128(xq + 32 * a + 16, (u32*)q + 4);
                const float d = xd[a];
                i32 n0, n1;
                act_sums(q, n0, n1);
#pragma unroll
                for (int i = 0; i < ROWS_PER_BLOCK; i++) acc[i][t] += chunk_dot_sums(k[i], q, d, n0, n1);
            }
        }
    }
    store_rows(acc, row0, rows, tokens, out);
}

// Unquantized weights: f32 activations, no int8 step. Where cols is a
// multiple of 8 (every row and activation row then 16-byte aligned), a
// thread takes 8 consecutive elements a step by 128-bit loads; otherwise
// one element a step.
template <int T>
__device__ void mmv_float(const u8* w, size_t row_bytes, int rows, int cols, const float* x, int tokens, float* out) {
    const u8* r[ROWS_PER_BLOCK];
    int row0;
    block_rows(w, row_bytes, rows, r, row0);
    float acc[ROWS_PER_BLOCK][MAX_BATCH] = {};
    if (cols % 8 == 0) {
        for (int g = threadIdx.x; g < cols / 8; g += blockDim.x) {
            float wv[ROWS_PER_BLOCK][8];
#pragma unroll
            for (int i = 0; i < ROWS_PER_BLOCK; i++) float_weights8<T>(r[i], g, wv[i]);
#pragma unroll
            for (int t = 0; t < MAX_BATCH; t++) {
                if (t < tokens) {
                    u32 xv[8];
                    const u8* xt = (const u8*)(x + (size_t)t * cols + 8 * g);
                    ld128(xt, xv);
                    ld128(xt + 16, xv + 4);
#pragma unroll
                    for (int i = 0; i < ROWS_PER_BLOCK; i++)
#pragma unroll
                        for (int e = 0; e < 8; e++) acc[i][t] += wv[i][e] * __uint_as_float(xv[e]);
                }
            }
        }
    } else {
        for (int e = threadIdx.x; e < cols; e += blockDim.x) {
            float wv[ROWS_PER_BLOCK];
#pragma unroll
            for (int i = 0; i < ROWS_PER_BLOCK; i++) wv[i] = float_weight<T>(r[i], e);
#pragma unroll
            for (int t = 0; t < MAX_BATCH; t++) {
                if (t < tokens) {
                    const float xe = x[(size_t)t * cols + e];
#pragma unroll
                    for (int i = 0; i < ROWS_PER_BLOCK; i++) acc[i][t] += wv[i] * xe;
                }
            }
        }
    }
    store_rows(acc, row0, rows, tokens, out);
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

#define QUANT_KERNELS(name, T)                                                                                    \
    extern "C" __global__ void MATVEC_BOUNDS mmvq_##name(const u8* w, size_t row_bytes, int rows, int cols,       \
                                                         const u8* xq, const float* xd, int tokens, float* out) { \
        mmvq<T>(w, row_bytes, rows, cols, xq, xd, tokens, out);                                                   \
    }                                                                                                             \
    extern "C" __global__ void embed_##name(const u8* t, size_t row_bytes, const u32* ids, int cols, float scale, \
                                            float* out) {                                                         \
        embed_q<T>(t, row_bytes, ids, cols, scale, out);                                                          \
    }

#define FLOAT_KERNELS(name, T)                                                                                    \
    extern "C" __global__ void MATVEC_BOUNDS mmv_##name(const u8* w, size_t row_bytes, int rows, int cols,        \
                                                        const float* x, int tokens, float* out) {                 \
        mmv_float<T>(w, row_bytes, rows, cols, x, tokens, out);                                                   \
    }                                                                                                             \
    extern "C" __global__ void embed_##name(const u8* t, size_t row_bytes, const u32* ids, int cols, float scale, \
                                            float* out) {                                                         \
        embed_f<T>(t, row_bytes, ids, cols, scale, out);                                                          \
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
#define QUANT_ID_KERNEL(name, T)                                                                               \
    extern "C" __global__ void MATVEC_BOUNDS mmvq_id_##name(const u8* w, size_t row_bytes, int rows, int cols, \
                                                            const u8* xq, const float* xd, const u32* ids,     \
                                                            int x_div, int first, float* out) {                \
        const size_t s = (size_t)first + blockIdx.y;                                                           \
        const size_t a = (s / x_div) * (cols / 32);                                                            \
        mmvq<T>(w + (size_t)ids[s] * rows * row_bytes, row_bytes, rows, cols, xq + 32 * a, xd + a, 1,          \
                out + s * rows);                                                                               \
    }

#define FLOAT_ID_KERNEL(name, T)                                                                                 \
    extern "C" __global__ void MATVEC_BOUNDS mmv_id_##name(const u8* w, size_t row_bytes, int rows, int cols,    \
                                                           const float* x, const u32* ids, int x_div, int first, \
                                                           float* out) {                                         \
        const size_t s = (size_t)first + blockIdx.y;                                                             \
        mmv_float<T>(w + (size_t)ids[s] * rows * row_bytes, row_bytes, rows, cols, x + (s / x_div) * cols, 1,    \
                     out + s * rows);                                                                            \
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
