// Runs ggml's own ssm_conv and gated_delta_net (CPU backend) on seeded
// inputs and writes inputs and results for kernels/tests/cpu_delta_net_ggml.rs.
// Build and run it from the repository root:
/*
   L=~/.cache/strata/llama-src/llama_cpp_python-0.3.36/vendor/llama.cpp
   B=~/.cache/strata/llama-build
   cc -O2 -I$L/ggml/include scripts/ggml-delta-net-check.c \
      -L$B/bin -lggml-base -lggml-cpu -lm -o /tmp/gdn-check
   LD_LIBRARY_PATH=$B/bin /tmp/gdn-check /tmp/gdn
   STRATA_GGML_DELTA_NET=/tmp/gdn cargo test -p strata-kernels \
      --test cpu_delta_net_ggml -- --ignored
 */
// File layout (little-endian): i32 header, then f32 arrays.
//   conv-d.bin: C, d_conv, T; x[T][C], state0[d-1][C], w[C][d], y[T][C], state[d-1][C]
//   dn-S.bin: S, H_k, H_v, T; q, k, v, g, beta, state0, o, state (op layouts)
#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "ggml.h"
#include "ggml-cpu.h"

static uint64_t rng = 0x64656c7461ULL;
static float uni(float lo, float hi) {
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return lo + (hi - lo) * (float)((rng >> 40) & 0xffffff) / 16777216.0f;
}
static void fill(float * x, int64_t n, float lo, float hi) { for (int64_t i = 0; i < n; i++) x[i] = uni(lo, hi); }
static void wr_i(FILE * f, int v) { fwrite(&v, 4, 1, f); }
static void wr(FILE * f, const float * x, int64_t n) { fwrite(x, 4, n, f); }

static struct ggml_context * new_ctx(void) {
    struct ggml_init_params p = { 256u << 20, NULL, false };
    return ggml_init(p);
}

static void conv_case(const char * dir, int C, int d, int T) {
    struct ggml_context * ctx = new_ctx();
    int h = d - 1;
    float * x = malloc(sizeof(float) * T * C), * s0 = malloc(sizeof(float) * h * C);
    fill(x, (int64_t) T * C, -1, 1); fill(s0, (int64_t) h * C, -1, 1);
    struct ggml_tensor * sx = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, h + T, C);
    struct ggml_tensor * w  = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, d, C);
    fill(w->data, (int64_t) d * C, -0.5f, 0.5f);
    float * u = sx->data;
    for (int ch = 0; ch < C; ch++)
        for (int r = 0; r < h + T; r++)
            u[ch * (h + T) + r] = r < h ? s0[r * C + ch] : x[(r - h) * C + ch];
    struct ggml_tensor * y = ggml_ssm_conv(ctx, sx, w);
    struct ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, y);
    ggml_graph_compute_with_ctx(ctx, gf, 4);
    char path[512]; snprintf(path, sizeof path, "%s/conv-%d.bin", dir, d);
    FILE * f = fopen(path, "wb");
    wr_i(f, C); wr_i(f, d); wr_i(f, T);
    wr(f, x, (int64_t) T * C); wr(f, s0, (int64_t) h * C); wr(f, w->data, (int64_t) d * C);
    wr(f, y->data, (int64_t) T * C);
    for (int r = T; r < h + T; r++)
        for (int ch = 0; ch < C; ch++) { float v = u[ch * (h + T) + r]; wr(f, &v, 1); }
    fclose(f); free(x); free(s0); ggml_free(ctx);
}

static void unit_heads(float * x, int64_t n, int S) {
    fill(x, n, -1, 1);
    for (int64_t o = 0; o < n; o += S) {
        float ss = 0; for (int i = 0; i < S; i++) ss += x[o + i] * x[o + i];
        float r = sqrtf(ss); for (int i = 0; i < S; i++) x[o + i] /= r;
    }
}

static void dn_case(const char * dir, int S, int Hk, int Hv, int T) {
    struct ggml_context * ctx = new_ctx();
    struct ggml_tensor * q = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, S, Hk, T, 1);
    struct ggml_tensor * k = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, S, Hk, T, 1);
    struct ggml_tensor * v = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, S, Hv, T, 1);
    struct ggml_tensor * g = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, 1, Hv, T, 1);
    struct ggml_tensor * b = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, 1, Hv, T, 1);
    struct ggml_tensor * s = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, S, S, Hv, 1);
    unit_heads(q->data, ggml_nelements(q), S); unit_heads(k->data, ggml_nelements(k), S);
    fill(v->data, ggml_nelements(v), -1, 1); fill(s->data, ggml_nelements(s), -0.5f, 0.5f);
    for (int64_t i = 0; i < ggml_nelements(g); i++) {
        ((float *) g->data)[i] = -logf(1 + expf(uni(-4, 0))) * 0.5f;
        ((float *) b->data)[i] = 1 / (1 + expf(-uni(-4, 4)));
    }
    struct ggml_tensor * out = ggml_gated_delta_net(ctx, q, k, v, g, b, s, 1);
    struct ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, out);
    ggml_graph_compute_with_ctx(ctx, gf, 4);
    char path[512]; snprintf(path, sizeof path, "%s/dn-%d.bin", dir, S);
    FILE * f = fopen(path, "wb");
    wr_i(f, S); wr_i(f, Hk); wr_i(f, Hv); wr_i(f, T);
    wr(f, q->data, ggml_nelements(q)); wr(f, k->data, ggml_nelements(k)); wr(f, v->data, ggml_nelements(v));
    wr(f, g->data, ggml_nelements(g)); wr(f, b->data, ggml_nelements(b)); wr(f, s->data, ggml_nelements(s));
    wr(f, out->data, (int64_t) S * Hv * T + (int64_t) S * S * Hv);
    fclose(f); ggml_free(ctx);
}

int main(int argc, char ** argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]); return 1; }
    // d_conv 4 (Qwen3.5) and 7 (GCC's fused tail of the conv sum);
    // S 16, 32, 128 (Qwen3.5) and 78 (ggml_vec_dot_f32's leftover loop in
    // all three of its compiled parts: 8 and 4 rounded products, 2 fused).
    conv_case(argv[1], 48, 4, 40);
    conv_case(argv[1], 20, 7, 9);
    dn_case(argv[1], 16, 2, 4, 40);
    dn_case(argv[1], 32, 2, 2, 40);
    dn_case(argv[1], 78, 1, 3, 12);
    dn_case(argv[1], 128, 2, 4, 40);
    return 0;
}
