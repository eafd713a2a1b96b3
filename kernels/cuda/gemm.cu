// Prompt matmuls on tensor cores: out[t * rows + r] = W[r] . x[t] for
// batches longer than the decode kernels' MAX_BATCH (backend/gemm.rs picks
// this path). As llama.cpp's MMQ: a block owns GEMM_ROWS weight rows x
// GEMM_TOKENS tokens of the output and walks k GEMM_CHUNKS 32-value chunks at
// a time, staging in shared memory the weights unpacked to int8 levels with
// a scale and an offset per 16 (quant.cuh's Chunk) and the int8 activations.
// Each of the 4 warps multiplies a 32 x 32 part of the tile with
// mma.sync m16n8k16 s8 (common.cuh's mma_s8_m16n8k16) and scales the int32
// sums in f32 per chunk:
//   d_t * (ws_r0 * q.a over half 0 + ws_r1 * q.a over half 1)
//     + wm_r0 * d_t * sum(a over half 0) + wm_r1 * d_t * sum(a over half 1),
// matvec.cu's chunk_dot term for term (only the f32 summation order differs).
// A weight byte is read from global memory once per 64 tokens (the decode
// kernel: once per 8), and the products run on tensor cores, not dp4a.

#define GEMM_ROWS 64
#define GEMM_TOKENS 64
#define GEMM_CHUNKS 4
#define GEMM_THREADS 128
// 32-bit words per staged row: 8 per chunk plus 4 of padding, so the 32 lanes
// of a fragment load (rows g = 0..7, words t = 0..3: bank 4g + t) hit 32
// different banks.
#define GEMM_STRIDE (8 * GEMM_CHUNKS + 4)

// int32 to f32 without the conversion instruction (a quarter of the FMA
// rate on sm_80..sm_90, and one per product here): the mma starts its sums
// at the bits of 1.5 * 2^23, so for |sum| < 2^22 (16 or 32 int8 products
// are at most 2^19) the result's bits are the float 1.5 * 2^23 + sum,
// exactly, and one subtraction leaves sum.
#define GEMM_F32_BIAS 0x4B400000
#define GEMM_F32_BIAS_VALUE 12582912.0f

__device__ __forceinline__ float gemm_sum(i32 d) { return __int_as_float(d) - GEMM_F32_BIAS_VALUE; }

// Per weight type: whether the two halves of a chunk have scales of their
// own (else one scale per chunk: its two k16 products add up in the tensor
// core's int32 accumulator), and whether there is an offset at all.
template <int T> struct GemmType {
    static constexpr bool HALF_SCALES = T == T_Q2_K || T == T_Q3_K || T == T_Q6_K;
    static constexpr bool OFFSET = !(T == T_Q8_0 || T == T_Q3_K || T == T_Q6_K || T == T_Q8_K || T == T_MXFP4);
};

// x: tokens x cols f32 -> int8 levels xq (tokens x cols bytes, a = x / d
// rounded, as quantize_act) and per 32-value chunk xs = {d, d * sum(a over
// 0..15), d * sum(a over 16..31), 0}: the sums the weight offsets multiply,
// made once here rather than in every block of rows. One thread per chunk.
extern "C" __global__ void gemm_quantize_act(const float* x, i32* xq, float* xs, int tokens, int cols) {
    const int chunks = cols / 32;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= tokens * chunks) return;
    const float* src = x + (size_t)i * 32;  // chunk i of the token-major buffer
    float amax = 0.0f;
#pragma unroll
    for (int e = 0; e < 32; e++) amax = fmaxf(amax, fabsf(src[e]));
    const float d = amax / 127.0f;
    const float id = d > 0.0f ? 1.0f / d : 0.0f;
    i32 n[2] = {0, 0};
#pragma unroll
    for (int w = 0; w < 8; w++) {
        int b[4];
#pragma unroll
        for (int e = 0; e < 4; e++) b[e] = __float2int_rn(src[4 * w + e] * id);
        const i32 q = pack4(b[0], b[1], b[2], b[3]);
        xq[(size_t)i * 8 + w] = q;
        n[w / 4] = dp4a(q, 0x01010101, n[w / 4]);
    }
    xs[4 * (size_t)i] = d;
    xs[4 * (size_t)i + 1] = d * n[0];
    xs[4 * (size_t)i + 2] = d * n[1];
    xs[4 * (size_t)i + 3] = 0.0f;
}

// The block's tile in shared memory for one step of GEMM_CHUNKS chunks.
// Scales are stored half-major so that lanes reading consecutive rows or
// tokens read consecutive banks.
struct GemmTile {
    i32 wq[GEMM_ROWS][GEMM_STRIDE];          // weight levels, row-major
    float ws[2 * GEMM_CHUNKS][GEMM_ROWS];    // scale of each row's 16-value half
    float wm[2 * GEMM_CHUNKS][GEMM_ROWS];    // its offset
    i32 xq[GEMM_TOKENS][GEMM_STRIDE];        // activation levels, token-major
    float xd[GEMM_CHUNKS][GEMM_TOKENS];      // activation scale per chunk
    float xs[2 * GEMM_CHUNKS][GEMM_TOKENS];  // d * sum of a half's levels
};

// Stages chunks c0 .. c0 + nc of the block's rows and tokens. Rows and tokens
// past the end are zeros (their products are computed, never stored).
template <int T>
__device__ __forceinline__ void gemm_stage(GemmTile& s, const u8* w, size_t row_bytes, int rows, const i32* xq,
                                           const float* xs, int tokens, int chunks, int row0, int tok0, int c0,
                                           int nc) {
    constexpr int SUBS = Block<T>::ELEMS / 32;
    // Consecutive threads take consecutive chunks of a row: neighbouring
    // blocks of the weight in memory.
    for (int i = threadIdx.x; i < GEMM_ROWS * GEMM_CHUNKS; i += blockDim.x) {
        const int r = i / GEMM_CHUNKS, cc = i % GEMM_CHUNKS, c = c0 + cc;
        if (cc >= nc) continue;
        Chunk k;
        if (row0 + r < rows) {
            unpack<T>(w + (size_t)(row0 + r) * row_bytes + (size_t)(c / SUBS) * Block<T>::BYTES, c % SUBS, k);
        } else {
#pragma unroll
            for (int q = 0; q < 8; q++) k.q[q] = 0;
            same_scale(k, 0.0f, 0.0f);
        }
#pragma unroll
        for (int q = 0; q < 8; q++) s.wq[r][8 * cc + q] = k.q[q];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            s.ws[2 * cc + h][r] = k.ws[h];
            s.wm[2 * cc + h][r] = k.wm[h];
        }
    }
    for (int i = threadIdx.x; i < GEMM_TOKENS * GEMM_CHUNKS; i += blockDim.x) {
        const int t = i / GEMM_CHUNKS, cc = i % GEMM_CHUNKS, c = c0 + cc;
        if (cc >= nc) continue;
        const bool in = tok0 + t < tokens;
        const size_t a = (size_t)(tok0 + t) * chunks + c;
#pragma unroll
        for (int q = 0; q < 8; q++) s.xq[t][8 * cc + q] = in ? xq[8 * a + q] : 0;
        s.xd[cc][t] = in ? xs[4 * a] : 0.0f;
#pragma unroll
        for (int h = 0; h < 2; h++) s.xs[2 * cc + h][t] = in ? xs[4 * a + 1 + h] : 0.0f;
    }
}

// One staged chunk cc into the warp's accumulators: acc[i][j] is the 16 x 8
// output fragment of rows wr + 16 i, tokens wt + 8 j (only the first m_tiles
// x n_tiles hold rows and tokens that exist; the rest are skipped whole, the
// same way by every lane of the warp, as mma.sync needs).
template <int T>
__device__ __forceinline__ void gemm_chunk(const GemmTile& s, int cc, int wr, int wt, int m_tiles, int n_tiles,
                                           float (&acc)[2][4][4]) {
    const int lane = threadIdx.x % WARP, g = lane / 4, tq = lane % 4;
    // Fragments (common.cuh's layout): A rows g and g + 8, words tq of each
    // half; B token g, word tq of each half.
    i32 a[2][2][2], b[4][2];
    float ws[2][2][2], wm[2][2][2];  // [m tile][row g / g + 8][half]
#pragma unroll
    for (int i = 0; i < 2; i++) {
#pragma unroll
        for (int u = 0; u < 2; u++) {
            const int r = wr + 16 * i + 8 * u + g;
#pragma unroll
            for (int h = 0; h < 2; h++) {
                a[i][h][u] = s.wq[r][8 * cc + 4 * h + tq];
                ws[i][u][h] = s.ws[2 * cc + h][r];
                wm[i][u][h] = s.wm[2 * cc + h][r];
            }
        }
    }
    float xd[4][2], xs[4][2][2];  // [n tile][token 2 tq / 2 tq + 1](half)
#pragma unroll
    for (int j = 0; j < 4; j++) {
#pragma unroll
        for (int h = 0; h < 2; h++) b[j][h] = s.xq[wt + 8 * j + g][8 * cc + 4 * h + tq];
#pragma unroll
        for (int v = 0; v < 2; v++) {
            const int t = wt + 8 * j + 2 * tq + v;
            xd[j][v] = s.xd[cc][t];
            xs[j][v][0] = s.xs[2 * cc][t];
            xs[j][v][1] = s.xs[2 * cc + 1][t];
        }
    }
    const i32 bias[4] = {GEMM_F32_BIAS, GEMM_F32_BIAS, GEMM_F32_BIAS, GEMM_F32_BIAS};
#pragma unroll
    for (int i = 0; i < 2; i++) {
        if (i >= m_tiles) continue;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            if (j >= n_tiles) continue;
            // D element e: row g + 8 (e / 2), token 2 tq + e % 2.
            if (GemmType<T>::HALF_SCALES) {
                i32 d0[4], d1[4];
                mma_s8_m16n8k16(d0, a[i][0], b[j][0], bias);
                mma_s8_m16n8k16(d1, a[i][1], b[j][1], bias);
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int u = e / 2, v = e % 2;
                    float y = xd[j][v] * (ws[i][u][0] * gemm_sum(d0[e]) + ws[i][u][1] * gemm_sum(d1[e]));
                    if (GemmType<T>::OFFSET) y += wm[i][u][0] * xs[j][v][0] + wm[i][u][1] * xs[j][v][1];
                    acc[i][j][e] += y;
                }
            } else {
                // One scale for the chunk: both halves into one int32 sum.
                i32 d[4];
                mma_s8_m16n8k16(d, a[i][0], b[j][0], bias);
                mma_s8_m16n8k16(d, a[i][1], b[j][1], d);
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int u = e / 2, v = e % 2;
                    acc[i][j][e] += ws[i][u][0] * xd[j][v] * gemm_sum(d[e]);
                    if (GemmType<T>::OFFSET) acc[i][j][e] += wm[i][u][0] * (xs[j][v][0] + xs[j][v][1]);
                }
            }
        }
    }
}

// out[t * rows + r] = W[r] . x[t]; xq / xs from gemm_quantize_act. Grid:
// (rows / GEMM_ROWS, tokens / GEMM_TOKENS) rounded up, GEMM_THREADS threads.
template <int T>
__device__ void gemm_q(const u8* w, size_t row_bytes, int rows, int cols, const i32* xq, const float* xs,
                       int tokens, float* out) {
    __shared__ GemmTile s;
    const int chunks = cols / 32;
    const int row0 = blockIdx.x * GEMM_ROWS, tok0 = blockIdx.y * GEMM_TOKENS;
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP, g = lane / 4, tq = lane % 4;
    // Warps 2 x 2 over the tile, 32 rows x 32 tokens each.
    const int wr = (warp % 2) * 32, wt = (warp / 2) * 32;
    const int m_tiles = max(0, min(2, (rows - row0 - wr + 15) / 16));
    const int n_tiles = max(0, min(4, (tokens - tok0 - wt + 7) / 8));
    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;
    for (int c0 = 0; c0 < chunks; c0 += GEMM_CHUNKS) {
        const int nc = min(GEMM_CHUNKS, chunks - c0);
        __syncthreads();  // every warp is done with the previous step's tile
        gemm_stage<T>(s, w, row_bytes, rows, xq, xs, tokens, chunks, row0, tok0, c0, nc);
        __syncthreads();  // the tile is whole before any warp reads it
        for (int cc = 0; cc < nc; cc++) gemm_chunk<T>(s, cc, wr, wt, m_tiles, n_tiles, acc);
    }
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = row0 + wr + 16 * i + 8 * (e / 2) + g;
                const int t = tok0 + wt + 8 * j + 2 * tq + e % 2;
                if (r < rows && t < tokens) out[(size_t)t * rows + r] = acc[i][j][e];
            }
}

#define GEMM_KERNEL(name, T)                                                                                \
    extern "C" __global__ void gemm_##name(const u8* w, size_t row_bytes, int rows, int cols, const i32* xq, \
                                           const float* xs, int tokens, float* out) {                      \
        gemm_q<T>(w, row_bytes, rows, cols, xq, xs, tokens, out);                                           \
    }

GEMM_KERNEL(q4_0, T_Q4_0)
GEMM_KERNEL(q4_1, T_Q4_1)
GEMM_KERNEL(q5_0, T_Q5_0)
GEMM_KERNEL(q5_1, T_Q5_1)
GEMM_KERNEL(q8_0, T_Q8_0)
GEMM_KERNEL(q2_k, T_Q2_K)
GEMM_KERNEL(q3_k, T_Q3_K)
GEMM_KERNEL(q4_k, T_Q4_K)
GEMM_KERNEL(q5_k, T_Q5_K)
GEMM_KERNEL(q6_k, T_Q6_K)
GEMM_KERNEL(q8_k, T_Q8_K)
GEMM_KERNEL(mxfp4, T_MXFP4)
