// GGUF quant blocks on the device. Every quantized type is read 32 weights
// at a time (a "chunk"): 32 small integers q plus, for each half of 16, a
// scale and an offset with w = scale * q + offset. A dot product with
// activations quantized to int8 per chunk (x = d * a) is then
//   d * (scale0 * sum(q*a over half 0) + offset0 * sum(a over half 0) + ...)
// in integer dp4a arithmetic, the way llama.cpp's MMVQ works. Type ids are
// GGML's. Layouts follow ggml-common.h (see strata_model::quant).

#define T_F32 0
#define T_F16 1
#define T_Q4_0 2
#define T_Q4_1 3
#define T_Q5_0 6
#define T_Q5_1 7
#define T_Q8_0 8
#define T_Q2_K 10
#define T_Q3_K 11
#define T_Q4_K 12
#define T_Q5_K 13
#define T_Q6_K 14
#define T_Q8_K 15
#define T_BF16 30
#define T_MXFP4 39

// ALIGN: the alignment every block of a row has. Device allocations are
// 16-byte aligned (256 on a GPU) and a row is a whole number of blocks, so
// block i of any row (or expert) sits at a multiple of BYTES: aligned to the
// largest power of two dividing BYTES, at most 16.
template <int T> struct Block;
template <> struct Block<T_Q4_0> { static constexpr int BYTES = 18, ELEMS = 32, ALIGN = 2; };
template <> struct Block<T_Q4_1> { static constexpr int BYTES = 20, ELEMS = 32, ALIGN = 4; };
template <> struct Block<T_Q5_0> { static constexpr int BYTES = 22, ELEMS = 32, ALIGN = 2; };
template <> struct Block<T_Q5_1> { static constexpr int BYTES = 24, ELEMS = 32, ALIGN = 8; };
template <> struct Block<T_Q8_0> { static constexpr int BYTES = 34, ELEMS = 32, ALIGN = 2; };
template <> struct Block<T_Q2_K> { static constexpr int BYTES = 84, ELEMS = 256, ALIGN = 4; };
template <> struct Block<T_Q3_K> { static constexpr int BYTES = 110, ELEMS = 256, ALIGN = 2; };
template <> struct Block<T_Q4_K> { static constexpr int BYTES = 144, ELEMS = 256, ALIGN = 16; };
template <> struct Block<T_Q5_K> { static constexpr int BYTES = 176, ELEMS = 256, ALIGN = 16; };
template <> struct Block<T_Q6_K> { static constexpr int BYTES = 210, ELEMS = 256, ALIGN = 2; };
template <> struct Block<T_Q8_K> { static constexpr int BYTES = 292, ELEMS = 256, ALIGN = 4; };
template <> struct Block<T_MXFP4> { static constexpr int BYTES = 17, ELEMS = 32, ALIGN = 1; };

// ---- Aligned loads ----
// A field is read with the widest load its alignment allows (as llama.cpp's
// get_int_b2 / get_int_b4): a 32-bit word in one load where 4-aligned, two
// 16-bit loads where only 2-aligned, 128 bits at once where 16-aligned (the
// Q4_K / Q5_K quants, activation chunks, float rows). A byte-by-byte word
// (load_u32) is 4 load instructions, each touching the warp's whole span.
// On the host (emulator, host check) every load checks the alignment it
// claims and faults when it is wrong, as a GPU's misaligned access would.

#ifdef STRATA_HOST
#include <csignal>
#include <cstdint>
#include <cstdio>
template <int A> static inline void check_aligned(const void* p) {
    if ((uintptr_t)p % A != 0) {
        std::fprintf(stderr, "strata CUDA kernel: misaligned %d-byte access at %p\n", A, p);
        std::raise(SIGBUS);
    }
}
#endif

// u16 at a 2-aligned p.
__device__ __forceinline__ u16 ld16(const u8* p) {
#ifdef STRATA_HOST
    check_aligned<2>(p);
    u16 v;
    std::memcpy(&v, p, 2);
    return v;
#else
    return *(const u16*)p;
#endif
}

// Little-endian u32 at an A-aligned p (A = 1, 2, 4 or more).
template <int A> __device__ __forceinline__ u32 ldw(const u8* p) {
#ifdef STRATA_HOST
    check_aligned<(A < 4 ? A : 4)>(p);
    u32 v;
    std::memcpy(&v, p, 4);
    return v;
#else
    if (A >= 4) return *(const u32*)p;
    if (A == 2) return (u32)((const u16*)p)[0] | ((u32)((const u16*)p)[1] << 16);
    return load_u32(p);
#endif
}

// 16 bytes at a 16-aligned p in one 128-bit load (read-only path: weights and
// activations do not change during a kernel).
__device__ __forceinline__ void ld128(const u8* p, u32* o) {
#ifdef STRATA_HOST
    check_aligned<16>(p);
    std::memcpy(o, p, 16);
#else
    asm("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(o[0]), "=r"(o[1]), "=r"(o[2]), "=r"(o[3])
        : "l"(p));
#endif
}

struct Chunk {
    i32 q[8];      // 32 signed 8-bit values, 4 per word, element order
    float ws[2];   // scale of elements 0..15 and 16..31
    float wm[2];   // offset of elements 0..15 and 16..31
};

__device__ __forceinline__ i32 pack4(int a, int b, int c, int d) {
    return (a & 0xff) | ((b & 0xff) << 8) | ((c & 0xff) << 16) | ((u32)(d & 0xff) << 24);
}

__device__ __forceinline__ void same_scale(Chunk& k, float ws, float wm) {
    k.ws[0] = k.ws[1] = ws;
    k.wm[0] = k.wm[1] = wm;
}

// ---- Bit tricks on 4 packed bytes (whole words, no per-byte loop) ----
#define LOW_NIBBLES 0x0F0F0F0Fu
#define LOW_2BITS 0x03030303u
#define LOW_BITS 0x01010101u

// Bits 0..3 of x to bit 4 of bytes 0..3 (the fifth bit of Q5 levels).
__device__ __forceinline__ u32 bits_to_bit4(u32 x) {
    return ((x & 1) << 4) | ((x & 2) << 11) | ((x & 4) << 18) | ((x & 8) << 25);
}

// Each byte of v in [0, 2B) minus B, as int8 (B a power of two): flip the
// B bit, which then says "negative", and sign-extend from it. No borrow
// crosses bytes, so the four results are exact.
template <u32 B> __device__ __forceinline__ u32 bytes_minus(u32 v) {
    const u32 x = v ^ (B * LOW_BITS);
    return x | ((x & (B * LOW_BITS)) * ((256 - 2 * B) / B));
}

// Chunk `c` (0 .. ELEMS/32) of the block at `b` (aligned to Block<T>::ALIGN).
// Each k.q[i] is a 32-bit word of the block turned into 4 levels.
template <int T> __device__ void unpack(const u8* b, int c, Chunk& k);

// Q4_0/Q4_1/Q5_x: byte e holds element e (low nibble) and e + 16 (high).
template <> __device__ void unpack<T_Q4_0>(const u8* b, int, Chunk& k) {
    const float d = h2f(ld16(b));
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const u32 q = ldw<2>(b + 2 + 4 * i);
        k.q[i] = q & LOW_NIBBLES;
        k.q[i + 4] = (q >> 4) & LOW_NIBBLES;
    }
    same_scale(k, d, -8.0f * d);
}

template <> __device__ void unpack<T_Q4_1>(const u8* b, int, Chunk& k) {
    const u32 dm = ldw<4>(b);
    const float d = h2f(dm & 0xffff), m = h2f(dm >> 16);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const u32 q = ldw<4>(b + 4 + 4 * i);
        k.q[i] = q & LOW_NIBBLES;
        k.q[i + 4] = (q >> 4) & LOW_NIBBLES;
    }
    same_scale(k, d, m);
}

template <> __device__ void unpack<T_Q5_0>(const u8* b, int, Chunk& k) {
    const float d = h2f(ld16(b));
    const u32 qh = ldw<2>(b + 2);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const u32 q = ldw<2>(b + 6 + 4 * i);
        k.q[i] = (q & LOW_NIBBLES) | bits_to_bit4(qh >> (4 * i));
        k.q[i + 4] = ((q >> 4) & LOW_NIBBLES) | bits_to_bit4(qh >> (4 * i + 16));
    }
    same_scale(k, d, -16.0f * d);
}

template <> __device__ void unpack<T_Q5_1>(const u8* b, int, Chunk& k) {
    const u32 dm = ldw<8>(b);
    const float d = h2f(dm & 0xffff), m = h2f(dm >> 16);
    const u32 qh = ldw<4>(b + 4);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const u32 q = ldw<8>(b + 8 + 4 * i);
        k.q[i] = (q & LOW_NIBBLES) | bits_to_bit4(qh >> (4 * i));
        k.q[i + 4] = ((q >> 4) & LOW_NIBBLES) | bits_to_bit4(qh >> (4 * i + 16));
    }
    same_scale(k, d, m);
}

template <> __device__ void unpack<T_Q8_0>(const u8* b, int, Chunk& k) {
    const float d = h2f(ld16(b));
#pragma unroll
    for (int i = 0; i < 8; i++) k.q[i] = (i32)ldw<2>(b + 2 + 4 * i);
    same_scale(k, d, 0.0f);
}

// K-quants: chunk c of a 256-block is quarter j = c % 4 (a 2-bit shift, or a
// nibble) of the 32 quant bytes of group n = c / 4 (Q2_K, Q3_K, Q6_K).
template <> __device__ void unpack<T_Q2_K>(const u8* b, int c, Chunk& k) {
    const int n = c / 4, j = c % 4;
    const u32 dm = ldw<4>(b + 80);
    const float d = h2f(dm & 0xffff), dmin = h2f(dm >> 16);
#pragma unroll
    for (int i = 0; i < 8; i++) k.q[i] = (ldw<4>(b + 16 + 32 * n + 4 * i) >> (2 * j)) & LOW_2BITS;
    // The two 16-weight halves' scale bytes are adjacent: scales[8n + 2j + u].
    const u32 sc = ld16(b + 8 * n + 2 * j);
#pragma unroll
    for (int u = 0; u < 2; u++) {
        const u32 s = (sc >> (8 * u)) & 0xff;
        k.ws[u] = d * (s & 15);
        k.wm[u] = -dmin * (s >> 4);
    }
}

template <> __device__ void unpack<T_Q3_K>(const u8* b, int c, Chunk& k) {
    const int n = c / 4, j = c % 4;
    const float d = h2f(ld16(b + 108));
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const u32 low = (ldw<2>(b + 32 + 32 * n + 4 * i) >> (2 * j)) & LOW_2BITS;
        const u32 high = (ldw<2>(b + 4 * i) >> (4 * n + j)) & LOW_BITS;  // hmask: set means no -4
        k.q[i] = bytes_minus<4>(low | (high << 2));
    }
    // 6-bit scales of sub-blocks s = 8n + 2j and s + 1: low nibbles in bytes
    // (s % 8, +1) shifted by 4n, high 2 bits in bytes (8 + s % 4, +1).
    const int s = 8 * n + 2 * j;
    const u32 lo = ld16(b + 96 + (s & 7)), hi = ld16(b + 104 + (s & 3));
#pragma unroll
    for (int u = 0; u < 2; u++) {
        const int low = (lo >> (8 * u + 4 * n)) & 15;
        const int high = (hi >> (8 * u + 2 * (s / 4))) & 3;
        k.ws[u] = d * ((low | (high << 4)) - 32);
        k.wm[u] = 0.0f;
    }
}

// Q4_K / Q5_K: the first 16 bytes (d, dmin, 12 bytes of 6-bit scales and
// mins) are one 128-bit load; sub-block j's scale and min come from byte
// j % 4 of its three scale words.
__device__ __forceinline__ void scale_min_k4_words(int j, const u32* head, float& d, float& dmin, int& sc, int& m) {
    d = h2f(head[0] & 0xffff);
    dmin = h2f(head[0] >> 16);
    const int sh = 8 * (j % 4);
    const int b0 = (head[1] >> sh) & 0xff, b1 = (head[2] >> sh) & 0xff, b2 = (head[3] >> sh) & 0xff;
    if (j < 4) {
        sc = b0 & 63;
        m = b1 & 63;
    } else {
        sc = (b2 & 15) | ((b0 >> 6) << 4);
        m = (b2 >> 4) | ((b1 >> 6) << 4);
    }
}

template <> __device__ void unpack<T_Q4_K>(const u8* b, int c, Chunk& k) {
    u32 head[4], qs[8];
    ld128(b, head);
    ld128(b + 16 + 32 * (c / 2), qs);
    ld128(b + 32 + 32 * (c / 2), qs + 4);
    const int shift = 4 * (c % 2);
#pragma unroll
    for (int i = 0; i < 8; i++) k.q[i] = (qs[i] >> shift) & LOW_NIBBLES;
    float d, dmin;
    int sc, m;
    scale_min_k4_words(c, head, d, dmin, sc, m);
    same_scale(k, d * sc, -dmin * m);
}

template <> __device__ void unpack<T_Q5_K>(const u8* b, int c, Chunk& k) {
    u32 head[4], qh[8], qs[8];
    ld128(b, head);
    ld128(b + 16, qh);
    ld128(b + 32, qh + 4);
    ld128(b + 48 + 32 * (c / 2), qs);
    ld128(b + 64 + 32 * (c / 2), qs + 4);
    const int shift = 4 * (c % 2);
#pragma unroll
    for (int i = 0; i < 8; i++) k.q[i] = ((qs[i] >> shift) & LOW_NIBBLES) | (((qh[i] >> c) & LOW_BITS) << 4);
    float d, dmin;
    int sc, m;
    scale_min_k4_words(c, head, d, dmin, sc, m);
    same_scale(k, d * sc, -dmin * m);
}

template <> __device__ void unpack<T_Q6_K>(const u8* b, int c, Chunk& k) {
    const int n = c / 4, j = c % 4;
    const float d = h2f(ld16(b + 208));
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const u32 lo = (ldw<2>(b + 64 * n + 32 * (j & 1) + 4 * i) >> (4 * (j / 2))) & LOW_NIBBLES;
        const u32 hi = (ldw<2>(b + 128 + 32 * n + 4 * i) >> (2 * j)) & LOW_2BITS;
        k.q[i] = bytes_minus<32>(lo | (hi << 4));
    }
    // int8 scales[8n + 2j + u], adjacent.
    const u32 sc = ld16(b + 192 + 8 * n + 2 * j);
#pragma unroll
    for (int u = 0; u < 2; u++) {
        k.ws[u] = d * (i8)((sc >> (8 * u)) & 0xff);
        k.wm[u] = 0.0f;
    }
}

template <> __device__ void unpack<T_Q8_K>(const u8* b, int c, Chunk& k) {
    const float d = __uint_as_float(ldw<4>(b));
#pragma unroll
    for (int i = 0; i < 8; i++) k.q[i] = (i32)ldw<4>(b + 4 + 32 * c + 4 * i);
    same_scale(k, d, 0.0f);
}

// MXFP4: e (E8M0), then 16 bytes of E2M1 nibbles (low: elements 0..15,
// high: 16..31). Levels are the E2M1 values doubled (ggml's kvalues_mxfp4),
// so the scale is half the E8M0 value, 2^(e-128) (ggml_e8m0_to_fp32_half).
__device__ __forceinline__ float e8m0_to_f32_half(u32 e) {
    return __uint_as_float(e < 2 ? 0x00200000u << e : (e - 1) << 23);
}

// kvalues_mxfp4[n] = {0, 1, 2, 3, 4, 6, 8, 12} by magnitude bits, bit 3 the
// sign; computed rather than looked up (a runtime-indexed local array would
// live in local memory).
__device__ __forceinline__ int mxfp4_level(int n) {
    const int m = n & 7;
    const int mag = m < 4 ? m : (2 + (m & 1)) << ((m >> 1) - 1);
    return (n & 8) ? -mag : mag;
}

// 17-byte blocks are only byte-aligned: byte loads (as llama.cpp's
// get_int_b1), 16 for 32 weights.
template <> __device__ void unpack<T_MXFP4>(const u8* b, int, Chunk& k) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const u8* q = b + 1 + 4 * i;
        k.q[i] = pack4(mxfp4_level(q[0] & 15), mxfp4_level(q[1] & 15), mxfp4_level(q[2] & 15),
                       mxfp4_level(q[3] & 15));
        k.q[i + 4] = pack4(mxfp4_level(q[0] >> 4), mxfp4_level(q[1] >> 4), mxfp4_level(q[2] >> 4),
                           mxfp4_level(q[3] >> 4));
    }
    same_scale(k, e8m0_to_f32_half(b[0]), 0.0f);
}

// Element `e` (0..31) of an unpacked chunk, as a float weight.
__device__ __forceinline__ float chunk_weight(const Chunk& k, int e) {
    const int q = (i8)((k.q[e / 4] >> (8 * (e % 4))) & 0xff);
    const int u = e / 16;
    return k.ws[u] * q + k.wm[u];
}

// An activation chunk: 32 int8 values and their scale (x = d * a).
struct ActChunk {
    float d;
    i32 q[8];
};

// Sums of the activation levels over each half (what a weight offset
// multiplies). They depend on the activation only, so a kernel computes
// them once per activation chunk and reuses them for every row.
__device__ __forceinline__ void act_sums(const i32* a, i32& n0, i32& n1) {
    n0 = n1 = 0;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        n0 = dp4a(0x01010101, a[i], n0);
        n1 = dp4a(0x01010101, a[i + 4], n1);
    }
}

// Weight chunk . activation chunk (levels a, scale ad, half sums n0 n1).
__device__ __forceinline__ float chunk_dot_sums(const Chunk& k, const i32* a, float ad, i32 n0, i32 n1) {
    i32 s0 = 0, s1 = 0;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        s0 = dp4a(k.q[i], a[i], s0);
        s1 = dp4a(k.q[i + 4], a[i + 4], s1);
    }
    return ad * (k.ws[0] * s0 + k.wm[0] * n0 + k.ws[1] * s1 + k.wm[1] * n1);
}

__device__ __forceinline__ float chunk_dot(const Chunk& k, const ActChunk& a) {
    i32 n0, n1;
    act_sums(a.q, n0, n1);
    return chunk_dot_sums(k, a.q, a.d, n0, n1);
}

// A float weight element of an unquantized row (rows of F32 are 4-aligned,
// of F16/BF16 2-aligned).
template <int T> __device__ __forceinline__ float float_weight(const u8* row, int i);
template <> __device__ __forceinline__ float float_weight<T_F32>(const u8* row, int i) { return __uint_as_float(ldw<4>(row + 4 * i)); }
template <> __device__ __forceinline__ float float_weight<T_F16>(const u8* row, int i) { return h2f(ld16(row + 2 * i)); }
template <> __device__ __forceinline__ float float_weight<T_BF16>(const u8* row, int i) { return bf2f(ld16(row + 2 * i)); }

// Elements 8g .. 8g + 7 of a float row whose 8-element groups are 16-byte
// aligned: one 128-bit load for F16/BF16, two for F32.
template <int T> __device__ __forceinline__ void float_weights8(const u8* row, int g, float* w);
template <> __device__ __forceinline__ void float_weights8<T_F32>(const u8* row, int g, float* w) {
    u32 v[8];
    ld128(row + 32 * g, v);
    ld128(row + 32 * g + 16, v + 4);
#pragma unroll
    for (int e = 0; e < 8; e++) w[e] = __uint_as_float(v[e]);
}
template <> __device__ __forceinline__ void float_weights8<T_F16>(const u8* row, int g, float* w) {
    u32 v[4];
    ld128(row + 16 * g, v);
#pragma unroll
    for (int e = 0; e < 4; e++) {
        w[2 * e] = h2f(v[e] & 0xffff);
        w[2 * e + 1] = h2f(v[e] >> 16);
    }
}
template <> __device__ __forceinline__ void float_weights8<T_BF16>(const u8* row, int g, float* w) {
    u32 v[4];
    ld128(row + 16 * g, v);
#pragma unroll
    for (int e = 0; e < 4; e++) {
        w[2 * e] = bf2f(v[e] & 0xffff);
        w[2 * e + 1] = bf2f(v[e] >> 16);
    }
}
