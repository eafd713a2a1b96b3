// Attention over the paged f16 KV cache. A layer's K (and V) pool is
// n_blocks x BLOCK_TOKENS slots of kv_dim values; a sequence's positions
// map to slots through its block table.

#define BLOCK_TOKENS 32
#define MAX_HEAD_DIM 256
#define ATT_WARPS 4

// Writes each token's K and V rows into its slot.
extern "C" __global__ void kv_write(const float* k, const float* v, const u32* slots, u16* k_pool, u16* v_pool,
                                    int k_dim, int v_dim) {
    const int t = blockIdx.x;
    const size_t slot = slots[t];
    for (int i = threadIdx.x; i < k_dim; i += blockDim.x) k_pool[slot * k_dim + i] = f2h(k[(size_t)t * k_dim + i]);
    for (int i = threadIdx.x; i < v_dim; i += blockDim.x) v_pool[slot * v_dim + i] = f2h(v[(size_t)t * v_dim + i]);
}

// One block of ATT_WARPS warps per (token, head). Each warp walks every
// ATT_WARPS-th position of the token's window with an online softmax; the
// warps' partial results are merged at the end. `sinks` (or null): one logit
// per query head that joins the softmax's denominator with no value.
//   q: tokens x (n_heads * hd_k); out: tokens x (n_heads * hd_v)
//   token_pos[t], token_seq[t]; tables + table_start[seq] = block ids
extern "C" __global__ void attend(const float* q, const u16* k_pool, const u16* v_pool, const u32* token_pos,
                                  const u32* token_seq, const u32* table_start, const u32* tables, float* out,
                                  int n_heads, int n_kv_heads, int hd_k, int hd_v, float scale, int window,
                                  const float* sinks) {
    __shared__ float s_m[ATT_WARPS], s_l[ATT_WARPS];
    __shared__ float s_acc[ATT_WARPS][MAX_HEAD_DIM];
    const int t = blockIdx.x, head = blockIdx.y;
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const int kvh = head / (n_heads / n_kv_heads);
    const int k_dim = n_kv_heads * hd_k, v_dim = n_kv_heads * hd_v;
    const int pos = token_pos[t];
    const int first = window > 0 ? max(0, pos + 1 - window) : 0;
    const u32* table = tables + table_start[token_seq[t]];

    float qr[MAX_HEAD_DIM / WARP];
#pragma unroll
    for (int j = 0; j < MAX_HEAD_DIM / WARP; j++) {
        const int i = lane + WARP * j;
        qr[j] = i < hd_k ? q[(size_t)t * n_heads * hd_k + (size_t)head * hd_k + i] : 0.0f;
    }
    float acc[MAX_HEAD_DIM / WARP];
#pragma unroll
    for (int j = 0; j < MAX_HEAD_DIM / WARP; j++) acc[j] = 0.0f;
    float m = NEG_INF, l = 0.0f;

    for (int p = first + warp; p <= pos; p += ATT_WARPS) {
        const size_t slot = (size_t)table[p / BLOCK_TOKENS] * BLOCK_TOKENS + p % BLOCK_TOKENS;
        const u16* kr = k_pool + slot * k_dim + (size_t)kvh * hd_k;
        float s = 0.0f;
#pragma unroll
        for (int j = 0; j < MAX_HEAD_DIM / WARP; j++) {
            const int i = lane + WARP * j;
            if (i < hd_k) s += qr[j] * h2f(kr[i]);
        }
        s = warp_sum(s) * scale;
        const float m_new = fmaxf(m, s);
        const float corr = expf(m - m_new);
        const float e = expf(s - m_new);
        l = l * corr + e;
        const u16* vr = v_pool + slot * v_dim + (size_t)kvh * hd_v;
#pragma unroll
        for (int j = 0; j < MAX_HEAD_DIM / WARP; j++) {
            const int i = lane + WARP * j;
            acc[j] = acc[j] * corr + (i < hd_v ? e * h2f(vr[i]) : 0.0f);
        }
        m = m_new;
    }
    if (lane == 0) {
        s_m[warp] = m;
        s_l[warp] = l;
    }
#pragma unroll
    for (int j = 0; j < MAX_HEAD_DIM / WARP; j++) {
        const int i = lane + WARP * j;
        if (i < hd_v) s_acc[warp][i] = acc[j];
    }
    __syncthreads();
    float big = NEG_INF;
    for (int w = 0; w < ATT_WARPS; w++) big = fmaxf(big, s_m[w]);
    if (sinks) big = fmaxf(big, sinks[head]);
    float denom = sinks ? expf(sinks[head] - big) : 0.0f;
    for (int w = 0; w < ATT_WARPS; w++) denom += s_l[w] * (s_m[w] == NEG_INF ? 0.0f : expf(s_m[w] - big));
    for (int i = threadIdx.x; i < hd_v; i += blockDim.x) {
        float v = 0.0f;
        for (int w = 0; w < ATT_WARPS; w++)
            if (s_m[w] != NEG_INF) v += s_acc[w][i] * expf(s_m[w] - big);
        out[(size_t)t * n_heads * hd_v + (size_t)head * hd_v + i] = v / denom;
    }
}
