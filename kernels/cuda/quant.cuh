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

template <int T> struct Block;
template <> struct Block<T_Q4_0> { static constexpr int BYTES = 18, ELEMS = 32; };
template <> struct Block<T_Q4_1> { static constexpr int BYTES = 20, ELEMS = 32; };
template <> struct Block<T_Q5_0> { static constexpr int BYTES = 22, ELEMS = 32; };
template <> struct Block<T_Q5_1> { static constexpr int BYTES = 24, ELEMS = 32; };
template <> struct Block<T_Q8_0> { static constexpr int BYTES = 34, ELEMS = 32; };
template <> struct Block<T_Q2_K> { static constexpr int BYTES = 84, ELEMS = 256; };
template <> struct Block<T_Q3_K> { static constexpr int BYTES = 110, ELEMS = 256; };
template <> struct Block<T_Q4_K> { static constexpr int BYTES = 144, ELEMS = 256; };
template <> struct Block<T_Q5_K> { static constexpr int BYTES = 176, ELEMS = 256; };
template <> struct Block<T_Q6_K> { static constexpr int BYTES = 210, ELEMS = 256; };
template <> struct Block<T_Q8_K> { static constexpr int BYTES = 292, ELEMS = 256; };
template <> struct Block<T_MXFP4> { static constexpr int BYTES = 17, ELEMS = 32; };

struct Chunk {
    i32 q[8];      // 32 signed 8-bit values, 4 per word, element order
    float ws[2];   // scale of elements 0..15 and 16..31
    float wm[2];   // offset of elements 0..15 and 16..31
};

__device__ __forceinline__ i32 pack4(int a, int b, int c, int d) {
    return (a & 0xff) | ((b & 0xff) << 8) | ((c & 0xff) << 16) | ((u32)(d & 0xff) << 24);
}

__device__ __forceinline__ void pack32(const int* v, Chunk& k) {
#pragma unroll
    for (int i = 0; i < 8; i++) k.q[i] = pack4(v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]);
}

__device__ __forceinline__ void same_scale(Chunk& k, float ws, float wm) {
    k.ws[0] = k.ws[1] = ws;
    k.wm[0] = k.wm[1] = wm;
}

// Q4_K / Q5_K: the 6-bit scale and min of sub-block j (0..7).
__device__ __forceinline__ void scale_min_k4(int j, const u8* s, int& sc, int& m) {
    if (j < 4) {
        sc = s[j] & 63;
        m = s[j + 4] & 63;
    } else {
        sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

// Chunk `c` (0 .. ELEMS/32) of the block at `b`.
template <int T> __device__ void unpack(const u8* b, int c, Chunk& k);

template <> __device__ void unpack<T_Q4_0>(const u8* b, int, Chunk& k) {
    const float d = h2f(load_u16(b));
    int v[32];
#pragma unroll
    for (int e = 0; e < 16; e++) {
        v[e] = b[2 + e] & 15;
        v[e + 16] = b[2 + e] >> 4;
    }
    pack32(v, k);
    same_scale(k, d, -8.0f * d);
}

template <> __device__ void unpack<T_Q4_1>(const u8* b, int, Chunk& k) {
    const float d = h2f(load_u16(b)), m = h2f(load_u16(b + 2));
    int v[32];
#pragma unroll
    for (int e = 0; e < 16; e++) {
        v[e] = b[4 + e] & 15;
        v[e + 16] = b[4 + e] >> 4;
    }
    pack32(v, k);
    same_scale(k, d, m);
}

template <> __device__ void unpack<T_Q5_0>(const u8* b, int, Chunk& k) {
    const float d = h2f(load_u16(b));
    const u32 qh = load_u32(b + 2);
    int v[32];
#pragma unroll
    for (int e = 0; e < 16; e++) {
        v[e] = (b[6 + e] & 15) | (((qh >> e) & 1) << 4);
        v[e + 16] = (b[6 + e] >> 4) | (((qh >> (e + 16)) & 1) << 4);
    }
    pack32(v, k);
    same_scale(k, d, -16.0f * d);
}

template <> __device__ void unpack<T_Q5_1>(const u8* b, int, Chunk& k) {
    const float d = h2f(load_u16(b)), m = h2f(load_u16(b + 2));
    const u32 qh = load_u32(b + 4);
    int v[32];
#pragma unroll
    for (int e = 0; e < 16; e++) {
        v[e] = (b[8 + e] & 15) | (((qh >> e) & 1) << 4);
        v[e + 16] = (b[8 + e] >> 4) | (((qh >> (e + 16)) & 1) << 4);
    }
    pack32(v, k);
    same_scale(k, d, m);
}

template <> __device__ void unpack<T_Q8_0>(const u8* b, int, Chunk& k) {
    const float d = h2f(load_u16(b));
#pragma unroll
    for (int i = 0; i < 8; i++) k.q[i] = (i32)load_u32(b + 2 + 4 * i);
    same_scale(k, d, 0.0f);
}

template <> __device__ void unpack<T_Q2_K>(const u8* b, int c, Chunk& k) {
    const u8* scales = b;
    const u8* qs = b + 16;
    const float d = h2f(load_u16(b + 80)), dmin = h2f(load_u16(b + 82));
    const int n = c / 4, j = c % 4;
    int v[32];
#pragma unroll
    for (int u = 0; u < 2; u++) {
#pragma unroll
        for (int l = 0; l < 16; l++) v[16 * u + l] = (qs[32 * n + 16 * u + l] >> (2 * j)) & 3;
        const int sc = scales[8 * n + 2 * j + u];
        k.ws[u] = d * (sc & 15);
        k.wm[u] = -dmin * (sc >> 4);
    }
    pack32(v, k);
}

template <> __device__ void unpack<T_Q3_K>(const u8* b, int c, Chunk& k) {
    const u8* hmask = b;
    const u8* qs = b + 32;
    const u8* s = b + 96;
    const float d = h2f(load_u16(b + 108));
    const int n = c / 4, j = c % 4;
    const int m = 1 << (4 * n + j);
    int v[32];
#pragma unroll
    for (int u = 0; u < 2; u++) {
#pragma unroll
        for (int l = 0; l < 16; l++) {
            const int q = (qs[32 * n + 16 * u + l] >> (2 * j)) & 3;
            v[16 * u + l] = q - ((hmask[16 * u + l] & m) ? 0 : 4);
        }
        const int i = 8 * n + 2 * j + u;
        const int low = i < 8 ? (s[i] & 15) : (s[i - 8] >> 4);
        const int high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        k.ws[u] = d * ((low | (high << 4)) - 32);
        k.wm[u] = 0.0f;
    }
    pack32(v, k);
}

template <> __device__ void unpack<T_Q4_K>(const u8* b, int c, Chunk& k) {
    const float d = h2f(load_u16(b)), dmin = h2f(load_u16(b + 2));
    const u8* qs = b + 16 + 32 * (c / 2);
    const int shift = 4 * (c % 2);
    int v[32];
#pragma unroll
    for (int l = 0; l < 32; l++) v[l] = (qs[l] >> shift) & 15;
    pack32(v, k);
    int sc, m;
    scale_min_k4(c, b + 4, sc, m);
    same_scale(k, d * sc, -dmin * m);
}

template <> __device__ void unpack<T_Q5_K>(const u8* b, int c, Chunk& k) {
    const float d = h2f(load_u16(b)), dmin = h2f(load_u16(b + 2));
    const u8* qh = b + 16;
    const u8* qs = b + 48 + 32 * (c / 2);
    const int shift = 4 * (c % 2);
    int v[32];
#pragma unroll
    for (int l = 0; l < 32; l++) v[l] = ((qs[l] >> shift) & 15) | (((qh[l] >> c) & 1) << 4);
    pack32(v, k);
    int sc, m;
    scale_min_k4(c, b + 4, sc, m);
    same_scale(k, d * sc, -dmin * m);
}

template <> __device__ void unpack<T_Q6_K>(const u8* b, int c, Chunk& k) {
    const u8* ql = b;
    const u8* qh = b + 128;
    const i8* scales = (const i8*)(b + 192);
    const float d = h2f(load_u16(b + 208));
    const int n = c / 4, j = c % 4;
    int v[32];
#pragma unroll
    for (int l = 0; l < 32; l++) {
        const int lo = ql[64 * n + 32 * (j & 1) + l];
        const int nib = j < 2 ? (lo & 15) : (lo >> 4);
        const int hi = (qh[32 * n + l] >> (2 * j)) & 3;
        v[l] = (nib | (hi << 4)) - 32;
    }
    pack32(v, k);
#pragma unroll
    for (int u = 0; u < 2; u++) {
        k.ws[u] = d * scales[8 * n + u + 2 * j];
        k.wm[u] = 0.0f;
    }
}

template <> __device__ void unpack<T_Q8_K>(const u8* b, int c, Chunk& k) {
    const float d = load_f32(b);
#pragma unroll
    for (int i = 0; i < 8; i++) k.q[i] = (i32)load_u32(b + 4 + 32 * c + 4 * i);
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

template <> __device__ void unpack<T_MXFP4>(const u8* b, int, Chunk& k) {
    int v[32];
#pragma unroll
    for (int e = 0; e < 16; e++) {
        v[e] = mxfp4_level(b[1 + e] & 15);
        v[e + 16] = mxfp4_level(b[1 + e] >> 4);
    }
    pack32(v, k);
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

__device__ __forceinline__ float chunk_dot(const Chunk& k, const ActChunk& a) {
    i32 s0 = 0, s1 = 0, n0 = 0, n1 = 0;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        s0 = dp4a(k.q[i], a.q[i], s0);
        n0 = dp4a(0x01010101, a.q[i], n0);
        s1 = dp4a(k.q[i + 4], a.q[i + 4], s1);
        n1 = dp4a(0x01010101, a.q[i + 4], n1);
    }
    return a.d * (k.ws[0] * s0 + k.wm[0] * n0 + k.ws[1] * s1 + k.wm[1] * n1);
}

// A float weight element of an unquantized row.
template <int T> __device__ __forceinline__ float float_weight(const u8* row, int i);
template <> __device__ __forceinline__ float float_weight<T_F32>(const u8* row, int i) { return load_f32(row + 4 * i); }
template <> __device__ __forceinline__ float float_weight<T_F16>(const u8* row, int i) { return h2f(load_u16(row + 2 * i)); }
template <> __device__ __forceinline__ float float_weight<T_BF16>(const u8* row, int i) { return bf2f(load_u16(row + 2 * i)); }
