// Attention over the paged KV cache. A layer's K (and V) pool is
// n_blocks x BLOCK_TOKENS slots of kv_dim values, as f16 or as ggml's q8_0 /
// q4_0 blocks (`kv_type`: KV_F16, KV_Q8_0, KV_Q4_0); a sequence's positions
// map to slots through its block table. Quantized rows are dequantized to
// f16 as their tiles are loaded; the rest of the kernel is the same.
//
// Decode is bound by reading K and V, so the kernel is built to read each
// K/V value once per token (flash-decoding, with K/V shared by a GQA group):
// - one block per (token, KV head, context split) serves up to GROUP_HEADS
//   query heads of the KV head's group: a K/V tile is loaded once into
//   shared memory and used by every one of them;
// - a long context is cut into `gridDim.z` splits, so one sequence still
//   fills the GPU; each split leaves a partial (max, sum, accumulator) per
//   query head and `attend_combine` merges them. With one split the block
//   writes the output itself.
// Each block derives its position range from its token's position on the
// device: the launch shape depends only on the batch size and the split
// count, not on the contexts.

#define BLOCK_TOKENS 32
#define GROUP_HEADS 8  // query heads one block serves (a larger group takes several blocks)
#define MAX_SPLITS 64  // attend_combine merges up to this many splits (one thread each)
#define COMBINE_THREADS 128
#define KV_F16 0
#define KV_Q8_0 1
#define KV_Q4_0 2
#define MAX_FWHT 512  // widest Hadamard chunk (heads of up to 512 values)

// Bytes of one 32-value block of a quantized KV type.
__device__ __forceinline__ int kv_block_bytes(int kv_type) { return kv_type == KV_Q8_0 ? 34 : 18; }

// Bytes of a row of `n` values (n a multiple of 32 for the block types).
__device__ __forceinline__ size_t kv_row_bytes(int kv_type, int n) {
    return kv_type == KV_F16 ? (size_t)n * 2 : (size_t)(n / 32) * kv_block_bytes(kv_type);
}

// Value `col` of a quantized row starting at `row`, as ggml's
// dequantize_row_q8_0 / _q4_0 gives it.
__device__ __forceinline__ float kv_dequant(const u8* row, int kv_type, int col) {
    const u8* b = row + (size_t)(col / 32) * kv_block_bytes(kv_type);
    const float d = h2f((u16)(b[0] | (b[1] << 8)));
    const int j = col % 32;
    if (kv_type == KV_Q8_0) return (float)(i8)b[2 + j] * d;
    const int q = j < 16 ? (b[2 + j] & 15) : (b[2 + j - 16] >> 4);
    return (float)(q - 8) * d;
}

// A block's f16 scale, as one 16-bit store (blocks are 34 or 18 bytes from
// a 2-byte aligned row start). Stored as two bytes (`(u8)h`, `(u8)(h >> 8)`),
// the low byte came out 0 on an H200 (sm_90, NVRTC 13.0), though the PTX
// stored the converted register's low byte; the emulator kept it.
__device__ __forceinline__ void store_scale(u8* b, float d) { *(u16*)b = f2h(d); }

// Quantizes 32 values into one block as ggml's CPU from_float does
// (q8_0: d = amax/127, round half to even; q4_0: quantize_row_q4_0_ref).
__device__ __forceinline__ void kv_quantize_block(const float* x, u8* b, int kv_type) {
    if (kv_type == KV_Q8_0) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f, id = d != 0.0f ? 127.0f / amax : 0.0f;
        store_scale(b, d);
        for (int j = 0; j < 32; j++) b[2 + j] = (u8)(i8)__float2int_rn(x[j] * id);
    } else {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 32; j++)
            if (amax < fabsf(x[j])) amax = fabsf(x[j]), max = x[j];
        const float d = max / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        store_scale(b, d);
        for (int j = 0; j < 16; j++) {
            const int x0 = min(15, (int)(i8)(x[j] * id + 8.5f));
            const int x1 = min(15, (int)(i8)(x[j + 16] * id + 8.5f));
            b[2 + j] = (u8)(x0 | (x1 << 4));
        }
    }
}

// Each token's K and V rows into its slot as q8_0 / q4_0 blocks: thread i
// of token blockIdx.x quantizes blocks i, i + blockDim.x, ... of its rows.
extern "C" __global__ void kv_write_quant(const float* k, const float* v, const u32* slots, u8* k_pool, u8* v_pool,
                                          int k_dim, int v_dim, int kv_type) {
    const int t = blockIdx.x;
    const size_t slot = slots[t];
    const int bs = kv_block_bytes(kv_type), kb = k_dim / 32, vb = v_dim / 32;
    for (int i = threadIdx.x; i < kb + vb; i += blockDim.x) {
        if (i < kb)
            kv_quantize_block(k + (size_t)t * k_dim + i * 32, k_pool + slot * kb * bs + (size_t)i * bs, kv_type);
        else
            kv_quantize_block(v + (size_t)t * v_dim + (i - kb) * 32, v_pool + slot * vb * bs + (size_t)(i - kb) * bs,
                              kv_type);
    }
}

// The orthonormal Walsh-Hadamard transform of each chunk of `n` values (a
// power of two up to MAX_FWHT) of x into y (which may be x), one chunk per
// block: llama.cpp's rotation of K, Q and V for a quantized cache
// (`ggml_compute_forward_fwht`: scaled by 1/sqrt(n), then butterflies).
extern "C" __global__ void fwht_rows(const float* x, float* y, int n) {
    __shared__ float s[MAX_FWHT];
    const size_t base = (size_t)blockIdx.x * n;
    const float scale = 1.0f / sqrtf((float)n);
    for (int i = threadIdx.x; i < n; i += blockDim.x) s[i] = x[base + i] * scale;
    for (int len = 1; len < n; len <<= 1) {
        __syncthreads();
        for (int p = threadIdx.x; p < n / 2; p += blockDim.x) {
            const int i = p / len * 2 * len + p % len;
            const float u = s[i], w = s[i + len];
            s[i] = u + w;
            s[i + len] = u - w;
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) y[base + i] = s[i];
}

// Writes each token's K and V rows into its slot.
extern "C" __global__ void kv_write(const float* k, const float* v, const u32* slots, u16* k_pool, u16* v_pool,
                                    int k_dim, int v_dim) {
    const int t = blockIdx.x;
    const size_t slot = slots[t];
    for (int i = threadIdx.x; i < k_dim; i += blockDim.x) k_pool[slot * k_dim + i] = f2h(k[(size_t)t * k_dim + i]);
    for (int i = threadIdx.x; i < v_dim; i += blockDim.x) v_pool[slot * v_dim + i] = f2h(v[(size_t)t * v_dim + i]);
}

// Eight f16 values: one 16-byte load or store.
struct alignas(16) Half8 {
    u32 w[4];
};

// The shape of `attend_<D>`, for heads of up to D values (K and V).
template <int D>
struct AttendShape {
    static constexpr int THREADS = D < 128 ? 64 : 128;
    // Positions per tile; 16 for wide heads keeps shared memory near 20 KiB
    // (40 KiB at 512), so several blocks share an SM. Divides BLOCK_TOKENS:
    // a tile is contiguous slots of one KV block.
    static constexpr int TILE = D < 256 ? 32 : 16;
    // K rows padded by 16 bytes: the lanes of a warp read different rows
    // at the same column, and an odd row stride in 16-byte units keeps
    // those reads on different banks.
    static constexpr int K_STRIDE = D + 8;
    // (query head, position) scores each thread computes per tile.
    static constexpr int SCORES = GROUP_HEADS * TILE / THREADS;
    // Output dims each thread accumulates.
    static constexpr int DIMS = D / THREADS;
};

// Copies rows r_lo..=r_hi of a tile (TILE rows of `width` f16 values,
// `src_stride` apart) to `dst` (rows `DST_STRIDE` apart, D values each),
// zeros elsewhere: rows outside the token's range (whose slots may hold
// another sequence's values) and columns past `width` then add nothing.
template <int D, int DST_STRIDE>
__device__ __forceinline__ void load_tile(u16* dst, const u16* src, size_t src_stride, int width, int r_lo, int r_hi) {
    typedef AttendShape<D> S;
    if ((width & 7) == 0) {
        // Rows start 16-byte aligned (the pool is, and every offset is a
        // multiple of 8 values): 16-byte loads, consecutive threads on
        // consecutive chunks of a row.
        constexpr int CHUNKS = D / 8;
        for (int c = threadIdx.x; c < S::TILE * CHUNKS; c += S::THREADS) {
            const int r = c / CHUNKS, col = c % CHUNKS * 8;
            Half8 v = {{0, 0, 0, 0}};
            if (r >= r_lo && r <= r_hi && col < width) v = *(const Half8*)(src + r * src_stride + col);
            *(Half8*)(dst + r * DST_STRIDE + col) = v;
        }
    } else {
        for (int c = threadIdx.x; c < S::TILE * D; c += S::THREADS) {
            const int r = c / D, col = c % D;
            dst[r * DST_STRIDE + col] = r >= r_lo && r <= r_hi && col < width ? src[r * src_stride + col] : (u16)0;
        }
    }
}

// load_tile for a quantized pool: rows `src_stride` bytes apart from
// `src` (the head's first block), dequantized to f16.
template <int D, int DST_STRIDE>
__device__ __forceinline__ void load_tile_quant(u16* dst, const u8* src, size_t src_stride, int width, int r_lo,
                                                int r_hi, int kv_type) {
    typedef AttendShape<D> S;
    for (int c = threadIdx.x; c < S::TILE * D; c += S::THREADS) {
        const int r = c / D, col = c % D;
        dst[r * DST_STRIDE + col] =
            r >= r_lo && r <= r_hi && col < width ? f2h(kv_dequant(src + r * src_stride, kv_type, col)) : (u16)0;
    }
}

// Max and sum over the TILE lanes that hold one query head's scores.
template <int TILE>
__device__ __forceinline__ float tile_max(float v) {
#pragma unroll
    for (int o = TILE / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}
template <int TILE>
__device__ __forceinline__ float tile_sum(float v) {
#pragma unroll
    for (int o = TILE / 2; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

// One block: token blockIdx.x; KV head blockIdx.y / chunks and query heads
// [c * heads_per_block, ...) of its group (c = blockIdx.y % chunks); context
// split blockIdx.z of gridDim.z. `sinks` (or null): one logit per query head
// that joins the softmax's denominator with no value.
//   q: tokens x (n_heads * hd_k); out: tokens x (n_heads * hd_v)
//   part_acc: tokens x n_heads x splits x hd_v; part_ml: (max, sum) each
//   token_pos[t], token_seq[t]; tables + table_start[seq] = block ids
template <int D>
__device__ __forceinline__ void attend_block(const float* q, const u8* k_pool, const u8* v_pool, int kv_type,
                                             const u32* token_pos, const u32* token_seq, const u32* table_start,
                                             const u32* tables, float* out, float* part_acc, float* part_ml,
                                             const float* sinks, int n_heads, int n_kv_heads, int hd_k, int hd_v,
                                             int heads_per_block, float q_scale, float score_scale, int window) {
    typedef AttendShape<D> S;
    constexpr int TILE = S::TILE;
    // f16 tiles declared as Half8 for their 16-byte alignment.
    __shared__ Half8 s_k8[TILE * S::K_STRIDE / 8];
    __shared__ Half8 s_v8[TILE * D / 8];
    __shared__ Half8 s_q8[GROUP_HEADS * D / 8];  // Q rounded to f16, as the CPU backend (ggml) does
    u16 *s_k = (u16*)s_k8, *s_v = (u16*)s_v8, *s_q = (u16*)s_q8;
    __shared__ float s_p[GROUP_HEADS][TILE];  // this tile's exp(score - max)
    __shared__ float s_corr[GROUP_HEADS];     // rescales the accumulator to the new max
    __shared__ float s_m[GROUP_HEADS], s_l[GROUP_HEADS];

    const int t = blockIdx.x, split = blockIdx.z, n_splits = gridDim.z;
    const int group = n_heads / n_kv_heads, chunks = gridDim.y / n_kv_heads;
    const int kvh = blockIdx.y / chunks, h0 = blockIdx.y % chunks * heads_per_block;
    const int nh = min(heads_per_block, group - h0);
    const int head0 = kvh * group + h0;  // first query head of this block
    const int k_dim = n_kv_heads * hd_k, v_dim = n_kv_heads * hd_v;
    const int pos = token_pos[t];
    const int first = window > 0 ? max(0, pos + 1 - window) : 0;
    const u32* table = tables + table_start[token_seq[t]];

    // Tiles are aligned to multiples of TILE positions; this split takes an
    // equal share of the token's tiles (none when its context is short).
    const int tile_lo = first / TILE, n_tiles = pos / TILE - tile_lo + 1;
    const int per_split = (n_tiles + n_splits - 1) / n_splits;
    const int my_lo = tile_lo + split * per_split;
    const int my_hi = min(my_lo + per_split, tile_lo + n_tiles);  // exclusive

    if (kv_type == KV_F16) {
        for (int i = threadIdx.x; i < GROUP_HEADS * D; i += S::THREADS) {
            const int h = i / D, d = i % D;
            const float x = h < nh && d < hd_k ? q[(size_t)t * n_heads * hd_k + (size_t)(head0 + h) * hd_k + d] : 0.0f;
            s_q[i] = f2h(x * q_scale);
        }
    } else {
        // Against quantized K, Q goes through q8_0 as on the CPU (ggml's
        // vec_dot_type; llama.cpp's CUDA kernels quantize it too): one
        // thread per 32-value block, amax/127 as an f16 scale, round to
        // nearest even, the product kept in the f16 tile.
        for (int i = threadIdx.x; i < GROUP_HEADS * D / 32; i += S::THREADS) {
            const int h = i / (D / 32), d0 = i % (D / 32) * 32;
            const float* src = q + (size_t)t * n_heads * hd_k + (size_t)(head0 + h) * hd_k;
            float x[32], amax = 0.0f;
            for (int j = 0; j < 32; j++) {
                x[j] = h < nh && d0 + j < hd_k ? src[d0 + j] * q_scale : 0.0f;
                amax = fmaxf(amax, fabsf(x[j]));
            }
            const float d = h2f(f2h(amax / 127.0f)), id = amax != 0.0f ? 127.0f / amax : 0.0f;
            for (int j = 0; j < 32; j++) s_q[h * D + d0 + j] = f2h((float)__float2int_rn(x[j] * id) * d);
        }
    }

    // Thread i scores position i % TILE for query head i / TILE (and again
    // THREADS further on): a head's scores lie in TILE adjacent lanes.
    float m[S::SCORES], l[S::SCORES];
#pragma unroll
    for (int j = 0; j < S::SCORES; j++) m[j] = NEG_INF, l[j] = 0.0f;
    // Output dims threadIdx.x + j * THREADS of every query head of the
    // block: a warp reads consecutive values of a V row, writes
    // consecutive outputs.
    float acc[GROUP_HEADS][S::DIMS];
#pragma unroll
    for (int h = 0; h < GROUP_HEADS; h++)
#pragma unroll
        for (int j = 0; j < S::DIMS; j++) acc[h][j] = 0.0f;

    for (int tile = my_lo; tile < my_hi; tile++) {
        const int p0 = tile * TILE;
        const size_t slot0 = (size_t)table[p0 / BLOCK_TOKENS] * BLOCK_TOKENS + p0 % BLOCK_TOKENS;
        const int r_lo = max(first - p0, 0), r_hi = min(pos - p0, TILE - 1);
        __syncthreads();  // the last tile's readers are done with s_k, s_v, s_p
        if (kv_type == KV_F16) {
            const u16 *kp = (const u16*)k_pool, *vp = (const u16*)v_pool;
            load_tile<D, S::K_STRIDE>(s_k, kp + slot0 * k_dim + (size_t)kvh * hd_k, k_dim, hd_k, r_lo, r_hi);
            load_tile<D, D>(s_v, vp + slot0 * v_dim + (size_t)kvh * hd_v, v_dim, hd_v, r_lo, r_hi);
        } else {
            const size_t k_row = kv_row_bytes(kv_type, k_dim), v_row = kv_row_bytes(kv_type, v_dim);
            load_tile_quant<D, S::K_STRIDE>(s_k, k_pool + slot0 * k_row + kv_row_bytes(kv_type, kvh * hd_k), k_row,
                                            hd_k, r_lo, r_hi, kv_type);
            load_tile_quant<D, D>(s_v, v_pool + slot0 * v_row + kv_row_bytes(kv_type, kvh * hd_v), v_row, hd_v,
                                  r_lo, r_hi, kv_type);
        }
        __syncthreads();

#pragma unroll
        for (int j = 0; j < S::SCORES; j++) {
            const int i = threadIdx.x + j * S::THREADS, h = i / TILE, r = i % TILE;
            float s = NEG_INF;
            if (h < nh && r >= r_lo && r <= r_hi) {
                const Half8* kr = (const Half8*)(s_k + r * S::K_STRIDE);
                const Half8* qr = (const Half8*)(s_q + h * D);
                float dot = 0.0f;
#pragma unroll 4
                for (int c = 0; c < D / 8; c++) {
                    const Half8 kc = kr[c], qc = qr[c];  // qc: the same address in every lane, a broadcast
#pragma unroll
                    for (int w = 0; w < 4; w++) {
                        dot += h2f((u16)kc.w[w]) * h2f((u16)qc.w[w]);
                        dot += h2f((u16)(kc.w[w] >> 16)) * h2f((u16)(qc.w[w] >> 16));
                    }
                }
                s = dot * score_scale;
            }
            // Online softmax: the new running max, the tile's weights under
            // it, and the factor that moves the old sum (and accumulator).
            const float m_new = fmaxf(m[j], tile_max<TILE>(s));
            const float e = s == NEG_INF ? 0.0f : expf(s - m_new);
            const float corr = m_new == NEG_INF ? 1.0f : expf(m[j] - m_new);
            l[j] = l[j] * corr + tile_sum<TILE>(e);
            m[j] = m_new;
            s_p[h][r] = e;
            if (r == 0) s_corr[h] = corr;
        }
        __syncthreads();

#pragma unroll
        for (int h = 0; h < GROUP_HEADS; h++)
            if (h < nh)
#pragma unroll
                for (int j = 0; j < S::DIMS; j++) acc[h][j] *= s_corr[h];
        for (int r = r_lo; r <= r_hi; r++) {
            float v[S::DIMS];
#pragma unroll
            for (int j = 0; j < S::DIMS; j++) v[j] = h2f(s_v[r * D + threadIdx.x + j * S::THREADS]);
#pragma unroll
            for (int h = 0; h < GROUP_HEADS; h++)
                if (h < nh) {
                    const float p = s_p[h][r];
#pragma unroll
                    for (int j = 0; j < S::DIMS; j++) acc[h][j] += p * v[j];
                }
        }
    }

    // Each head's (max, sum) lives in the lanes that scored it.
#pragma unroll
    for (int j = 0; j < S::SCORES; j++) {
        const int i = threadIdx.x + j * S::THREADS, h = i / TILE;
        if (i % TILE == 0) s_m[h] = m[j], s_l[h] = l[j];
    }
    __syncthreads();

#pragma unroll
    for (int h = 0; h < GROUP_HEADS; h++) {
        if (h >= nh) continue;
        const int head = head0 + h;
        const size_t row = (size_t)t * n_heads + head;
        if (n_splits == 1) {
            // The whole context was this block's: normalize here (the sink
            // joins the denominator after the online pass, as on the CPU).
            float big = s_m[h], denom = s_l[h], scale = 1.0f;
            if (sinks) {
                const float sink = sinks[head], top = fmaxf(big, sink);
                scale = expf(big - top);
                denom = denom * scale + expf(sink - top);
            }
            const float f = scale / denom;
#pragma unroll
            for (int j = 0; j < S::DIMS; j++) {
                const int d = threadIdx.x + j * S::THREADS;
                if (d < hd_v) out[row * hd_v + d] = acc[h][j] * f;
            }
        } else {
            const size_t part = row * n_splits + split;
#pragma unroll
            for (int j = 0; j < S::DIMS; j++) {
                const int d = threadIdx.x + j * S::THREADS;
                if (d < hd_v) part_acc[part * hd_v + d] = acc[h][j];
            }
            if (threadIdx.x == 0) part_ml[2 * part] = s_m[h], part_ml[2 * part + 1] = s_l[h];
        }
    }
}

#define ATTEND_KERNEL(D)                                                                                            \
    extern "C" __global__ void __launch_bounds__(AttendShape<D>::THREADS)                                          \
        attend_##D(const float* q, const u8* k_pool, const u8* v_pool, int kv_type, const u32* token_pos,         \
                   const u32* token_seq, const u32* table_start, const u32* tables, float* out, float* part_acc,   \
                   float* part_ml, const float* sinks, int n_heads, int n_kv_heads, int hd_k, int hd_v,            \
                   int heads_per_block, float q_scale, float score_scale, int window) {                            \
        attend_block<D>(q, k_pool, v_pool, kv_type, token_pos, token_seq, table_start, tables, out, part_acc, part_ml,     \
                        sinks, n_heads, n_kv_heads, hd_k, hd_v, heads_per_block, q_scale, score_scale, window);    \
    }
ATTEND_KERNEL(64)
ATTEND_KERNEL(128)
ATTEND_KERNEL(256)
ATTEND_KERNEL(512)

// Merges the splits of one (token, query head): each split's accumulator
// and sum rescaled to the largest max (the sink's logit included), summed,
// divided by the total.
extern "C" __global__ void __launch_bounds__(COMBINE_THREADS)
    attend_combine(const float* part_acc, const float* part_ml, const float* sinks, float* out, int n_heads,
                   int hd_v, int n_splits) {
    __shared__ float s_w[MAX_SPLITS];
    __shared__ float s_inv;
    const int t = blockIdx.x, head = blockIdx.y;
    const size_t row = (size_t)t * n_heads + head;
    const float* ml = part_ml + 2 * row * n_splits;
    if (threadIdx.x < WARP) {
        float big = sinks ? sinks[head] : NEG_INF;
        for (int s = threadIdx.x; s < n_splits; s += WARP) big = fmaxf(big, ml[2 * s]);
        big = warp_max(big);
        float denom = 0.0f;
        for (int s = threadIdx.x; s < n_splits; s += WARP) {
            // An empty split (max -inf) weighs nothing.
            const float w = ml[2 * s] == NEG_INF ? 0.0f : expf(ml[2 * s] - big);
            s_w[s] = w;
            denom += w * ml[2 * s + 1];
        }
        denom = warp_sum(denom);
        if (threadIdx.x == 0) s_inv = 1.0f / (denom + (sinks ? expf(sinks[head] - big) : 0.0f));
    }
    __syncthreads();
    const float* acc = part_acc + row * n_splits * hd_v;
    for (int d = threadIdx.x; d < hd_v; d += COMBINE_THREADS) {
        float v = 0.0f;
        for (int s = 0; s < n_splits; s++) v += s_w[s] * acc[(size_t)s * hd_v + d];
        out[row * hd_v + d] = v * s_inv;
    }
}
