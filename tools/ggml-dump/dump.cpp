// ggml-dump: writes every graph node llama.cpp computes for one prompt as
// DUMP_DIR/NNNN.name.bin (a text header "OP TYPE ne0 ne1 ne2 ne3", then the
// values as f32), for tests/examples/ggml_diff. Build with build.sh.
#include "arg.h"
#include "common.h"
#include "llama.h"
#include "ggml.h"
#include "ggml-backend.h"
#include <cstdio>
#include <string>
#include <vector>

static int counter = 0;
static std::string out_dir;

static bool dumping = true;
static bool cb(struct ggml_tensor * t, bool ask, void *) {
    if (ask) return true;
    if (!dumping) return true;
    if (t->type != GGML_TYPE_F32 && t->type != GGML_TYPE_F16) return true;
    // The whole KV cache (n_ctx cells) after a write: huge, and its views follow.
    if (t->op == GGML_OP_SET_ROWS) return true;
    size_t n = ggml_nelements(t);
    std::vector<uint8_t> raw(ggml_nbytes(t));
    ggml_backend_tensor_get(t, raw.data(), 0, raw.size());
    // gather logically (handles non-contiguous views)
    std::vector<float> out; out.reserve(n);
    for (int64_t i3 = 0; i3 < t->ne[3]; i3++) for (int64_t i2 = 0; i2 < t->ne[2]; i2++)
    for (int64_t i1 = 0; i1 < t->ne[1]; i1++) for (int64_t i0 = 0; i0 < t->ne[0]; i0++) {
        size_t off = i0*t->nb[0] + i1*t->nb[1] + i2*t->nb[2] + i3*t->nb[3];
        if (t->type == GGML_TYPE_F32) out.push_back(*(float*)(raw.data()+off));
        else out.push_back(ggml_fp16_to_fp32(*(ggml_fp16_t*)(raw.data()+off)));
    }
    char path[512];
    snprintf(path, sizeof path, "%s/%04d.%s.bin", out_dir.c_str(), counter++, t->name);
    for (char * p = path + out_dir.size() + 1; *p; p++) if (*p == ' ' || *p == '/') *p = '_';
    FILE * f = fopen(path, "wb");
    fprintf(f, "%s %s %lld %lld %lld %lld\n", ggml_op_desc(t), ggml_type_name(t->type),
            (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3]);
    fwrite(out.data(), 4, out.size(), f);
    fclose(f);
    return true;
}

int main(int argc, char ** argv) {
    out_dir = getenv("DUMP_DIR");
    common_params params;
    common_init();
    if (!common_params_parse(argc, argv, params, LLAMA_EXAMPLE_COMMON)) return 1;
    llama_backend_init();
    params.cb_eval = cb;
    params.cb_eval_user_data = nullptr;
    params.warmup = false;
    auto init = common_init_from_params(params);
    auto * ctx = init->context();
    auto * vocab = llama_model_get_vocab(init->model());
    std::vector<llama_token> tokens = common_tokenize(ctx, params.prompt, llama_vocab_get_add_bos(vocab), true);
    fprintf(stderr, "tokens:"); for (auto t : tokens) fprintf(stderr, " %d", t); fprintf(stderr, "\n");
    common_batch batch = common_batch_get_one(ctx, tokens);
    if (getenv("DUMP_STEP2")) dumping = false;
    if (llama_process(ctx, LLAMA_PROCESS_TYPE_DECODE, batch.get())) return 1;
    // one decode step with the greedy token, so single-token paths are dumped too
    const float * logits = llama_get_logits_ith(ctx, -1);
    int n_vocab = llama_vocab_n_tokens(vocab), best = 0;
    for (int i = 1; i < n_vocab; i++) if (logits[i] > logits[best]) best = i;
    fprintf(stderr, "greedy: %d\n", best);
    std::vector<llama_token> next{best};
    common_batch b2 = common_batch_get_one(ctx, next);
    dumping = true;
    if (getenv("DUMP_STEP2")) { if (llama_process(ctx, LLAMA_PROCESS_TYPE_DECODE, b2.get())) return 1; }
    llama_backend_free();
    return 0;
}
