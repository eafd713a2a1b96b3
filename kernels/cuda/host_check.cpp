// Host harness for kernels/tests/cuda_quant_layouts.rs: runs quant.cuh's
// chunk unpacking and int8 dot product on the CPU (built with
// -DSTRATA_HOST_CHECK, see common.cuh).
//
// stdin:  i32 type, i32 n_blocks, the blocks' bytes, then per chunk an
//         f32 scale and 32 int8 activations
// stdout: per chunk 32 f32 weights, then per chunk one f32 dot product
#include <cstdio>
#include <vector>

#include "common.cuh"
#include "quant.cuh"

template <int T>
static void run(const std::vector<u8>& blocks, int n_blocks, std::vector<float>& w, std::vector<float>& dots, const std::vector<ActChunk>& acts) {
    constexpr int SUBS = Block<T>::ELEMS / 32;
    for (int b = 0; b < n_blocks; b++) {
        for (int c = 0; c < SUBS; c++) {
            Chunk k;
            unpack<T>(blocks.data() + (size_t)b * Block<T>::BYTES, c, k);
            for (int e = 0; e < 32; e++) w.push_back(chunk_weight(k, e));
            dots.push_back(chunk_dot(k, acts[b * SUBS + c]));
        }
    }
}

int main() {
    int type = 0, n_blocks = 0;
    if (fread(&type, 4, 1, stdin) != 1 || fread(&n_blocks, 4, 1, stdin) != 1) return 2;
    int bytes = 0, elems = 0;
    switch (type) {
#define CASE(T) case T: bytes = Block<T>::BYTES; elems = Block<T>::ELEMS; break;
        CASE(T_Q4_0) CASE(T_Q4_1) CASE(T_Q5_0) CASE(T_Q5_1) CASE(T_Q8_0)
        CASE(T_Q2_K) CASE(T_Q3_K) CASE(T_Q4_K) CASE(T_Q5_K) CASE(T_Q6_K) CASE(T_Q8_K)
        CASE(T_MXFP4)
        default: return 3;
    }
    std::vector<u8> blocks((size_t)bytes * n_blocks);
    if (fread(blocks.data(), 1, blocks.size(), stdin) != blocks.size()) return 4;
    std::vector<ActChunk> acts((size_t)n_blocks * elems / 32);
    for (auto& a : acts) {
        if (fread(&a.d, 4, 1, stdin) != 1 || fread(a.q, 4, 8, stdin) != 8) return 5;
    }
    std::vector<float> w, dots;
    switch (type) {
#define RUN(T) case T: run<T>(blocks, n_blocks, w, dots, acts); break;
        RUN(T_Q4_0) RUN(T_Q4_1) RUN(T_Q5_0) RUN(T_Q5_1) RUN(T_Q8_0)
        RUN(T_Q2_K) RUN(T_Q3_K) RUN(T_Q4_K) RUN(T_Q5_K) RUN(T_Q6_K) RUN(T_Q8_K)
        RUN(T_MXFP4)
    }
    fwrite(w.data(), 4, w.size(), stdout);
    fwrite(dots.data(), 4, dots.size(), stdout);
    return 0;
}
