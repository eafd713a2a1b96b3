// Qwen3.5's gated DeltaNet recurrence over per-sequence state rows: the
// short causal convolution (ssm_conv) and the gated delta rule (delta_net),
// as kernels/src/cpu/delta_net.rs defines them, and the clearing of a slot
// a new sequence takes (zero_rows) and the copy of a slot to or from a
// prefix-cache snapshot (copy_rows).
//
// A batch is a list of runs, one per sequence: `runs` holds (state slot,
// first token, token count) for each, on the device, so a recorded graph
// replays with the next batch's runs (backend/graphs.rs refreshes them).

// Most values of a state row one lane of delta_net keeps in registers: heads
// of up to 32 x DELTA_NET_PER_LANE values (backend/recurrent.rs refuses more).
#define DELTA_NET_PER_LANE 8
#define DELTA_NET_MAX_S (WARP * DELTA_NET_PER_LANE)

// Sets rows `rows[blockIdx.x]` of x (rows of `cols`) to zero.
extern "C" __global__ void zero_rows(float* x, const u32* rows, int cols) {
    float* row = x + (size_t)rows[blockIdx.x] * cols;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) row[i] = 0.0f;
}

// Copies row from[blockIdx.x] of x over row to[blockIdx.x] (rows of `cols`;
// no row is both read and written).
extern "C" __global__ void copy_rows(float* x, const u32* from, const u32* to, int cols) {
    const float* src = x + (size_t)from[blockIdx.x] * cols;
    float* dst = x + (size_t)to[blockIdx.x] * cols;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) dst[i] = src[i];
}

// One thread per (run, channel): y[t][ch] = sum_i u[t + i][ch] w[ch][i] over
// u = [state; x] (state: d_conv - 1 rows of `channels`, oldest first), the
// sum in the CPU backend's order (the first d_conv & ~3 products rounded
// before each add, the rest fused: GCC's code for ggml's loop). The state
// then becomes the last d_conv - 1 rows of u.
extern "C" __global__ void ssm_conv(const float* x, const float* w, float* state, float* y, const u32* runs,
                                    int channels, int d_conv) {
    const int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= channels) return;
    const u32* run = runs + 3 * blockIdx.y;
    const size_t first = run[1], count = run[2];
    const int hist = d_conv - 1;
    float* st = state + (size_t)run[0] * hist * channels + ch;
    const float* xc = x + first * channels + ch;
    const float* wc = w + (size_t)ch * d_conv;
    const int unfused = d_conv & ~3;
    for (size_t t = 0; t < count; t++) {
        float sum = 0.0f;
        for (int i = 0; i < d_conv; i++) {
            const size_t at = t + i;
            const float u = at < (size_t)hist ? st[at * channels] : xc[(at - hist) * channels];
            sum = i < unfused ? sum + mul_rn(u, wc[i]) : fmaf(u, wc[i], sum);
        }
        y[(first + t) * channels + ch] = sum;
    }
    // Ascending rows read u[count + r] at or after row r, before any write
    // reaches it.
    for (int r = 0; r < hist; r++) {
        const size_t at = count + r;
        st[(size_t)r * channels] = at < (size_t)hist ? st[at * channels] : xc[(at - hist) * channels];
    }
}

// The gated delta rule, one block per (value head, run). The head's state
// m (S x S, m[j][i] = S[i][j]) stays in the state row in place; each warp
// takes rows j in turn, its lanes holding row j's values i = lane + 32 c.
// Per token (k and q of the head's key head staged in shared memory):
//   m[j] *= exp(g);  delta_j = (v_j - m[j] . k) beta;  m[j] += k delta_j;
//   o_j = (m[j] . q) / sqrt(S).
// Rows are independent within a token, so warps need no barrier between
// them; the barriers guard the staged k and q.
extern "C" __global__ void delta_net(const float* q, const float* k, const float* v, const float* g,
                                     const float* beta, float* state, float* out, const u32* runs, int S,
                                     int n_k_heads, int n_v_heads) {
    __shared__ float ks[DELTA_NET_MAX_S];
    __shared__ float qs[DELTA_NET_MAX_S];
    const int h = blockIdx.x, kh = h % n_k_heads;
    const u32* run = runs + 3 * blockIdx.y;
    const size_t first = run[1], count = run[2];
    float* m = state + ((size_t)run[0] * n_v_heads + h) * S * S;
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, n_warps = blockDim.x / WARP;
    const float out_scale = 1.0f / sqrtf((float)S);
    for (size_t t = first; t < first + count; t++) {
        __syncthreads();  // the last token's k and q are read
        const size_t qk_at = (t * n_k_heads + kh) * S;
        for (int i = threadIdx.x; i < S; i += blockDim.x) {
            ks[i] = k[qk_at + i];
            qs[i] = q[qk_at + i];
        }
        __syncthreads();
        const size_t hv = t * n_v_heads + h;
        const float decay = expf(g[hv]), b = beta[hv];
        for (int j = warp; j < S; j += n_warps) {
            float* row = m + (size_t)j * S;
            float r[DELTA_NET_PER_LANE];
            float mk = 0.0f;
#pragma unroll
            for (int c = 0; c < DELTA_NET_PER_LANE; c++) {
                const int i = lane + WARP * c;
                if (i < S) {
                    r[c] = row[i] * decay;
                    mk = fmaf(r[c], ks[i], mk);
                }
            }
            mk = warp_sum(mk);
            const float delta = (v[hv * S + j] - mk) * b;
            float mq = 0.0f;
#pragma unroll
            for (int c = 0; c < DELTA_NET_PER_LANE; c++) {
                const int i = lane + WARP * c;
                if (i < S) {
                    r[c] = fmaf(ks[i], delta, r[c]);
                    row[i] = r[c];
                    mq = fmaf(r[c], qs[i], mq);
                }
            }
            mq = warp_sum(mq);
            if (lane == 0) out[hv * S + j] = mq * out_scale;
        }
    }
}
