// Shared by every kernel source: fixed-width types and f16/bf16 conversions
// by inline PTX, so NVRTC needs no CUDA headers (the PyPI NVRTC wheel ships
// none) and the same text compiles for sm_75 through sm_90.
//
// With STRATA_HOST_CHECK defined, the per-value helpers are plain C++ so the
// block layouts of quant.cuh can be checked on a CPU by a test
// (kernels/tests/cuda_quant_layouts.rs) without a GPU.

// Compiled for the CUDA emulator (kernels/cuda/emu/device.h in front), the
// same helpers take their host form (STRATA_HOST below).

#if defined(STRATA_HOST_CHECK) && !defined(STRATA_EMU)
#include <cmath>
#include <cstring>
#define __device__
#define __forceinline__ inline
static inline float __uint_as_float(unsigned x) { float f; std::memcpy(&f, &x, 4); return f; }
static inline float __int_as_float(int x) { float f; std::memcpy(&f, &x, 4); return f; }
#endif
#if defined(STRATA_HOST_CHECK) || defined(STRATA_EMU)
#define STRATA_HOST 1
#endif

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef short i16;
typedef unsigned int u32;
typedef int i32;
typedef unsigned long long u64;

#define WARP 32
#define FULL_MASK 0xffffffffu
#define NEG_INF __int_as_float(0xff800000)

#ifdef STRATA_HOST
static inline float h2f(u16 h) {
    const int exp = (h >> 10) & 31, man = h & 1023;
    if (exp == 31) return man ? NAN : ((h >> 15) ? -INFINITY : INFINITY);
    const float v = exp == 0 ? std::ldexp((float)man, -24) : std::ldexp((float)(man + 1024), exp - 25);
    return (h >> 15) ? -v : v;
}

// Round to nearest even, as cvt.rn.f16.f32.
static inline u16 f2h(float f) {
    u32 x;
    std::memcpy(&x, &f, 4);
    const u32 sign = (x >> 16) & 0x8000u;
    const u32 abs = x & 0x7fffffffu;
    if (abs >= 0x7f800000u) return sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u);
    if (abs >= 0x477ff000u) return sign | 0x7c00u;  // rounds to past 65504: inf
    if (abs < 0x38800000u) {
        // Subnormal (or zero) in f16: value / 2^-24, rounded to even.
        const float scaled = std::fabs(f) * 16777216.0f;
        return sign | (u16)std::nearbyint(scaled);
    }
    const u32 mant = abs + 0xfffu + ((abs >> 13) & 1u);  // round to even at bit 13
    return sign | (u16)((mant - 0x38000000u) >> 13);
}
#else
__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
#endif

__device__ __forceinline__ float bf2f(u16 b) {
    return __uint_as_float(((u32)b) << 16);
}

// Little-endian loads at any byte alignment (GGUF blocks are packed: an
// 18-byte Q4_0 block leaves its fields 2-byte aligned at best).
__device__ __forceinline__ u16 load_u16(const u8* p) {
    return (u16)p[0] | ((u16)p[1] << 8);
}

__device__ __forceinline__ u32 load_u32(const u8* p) {
    return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24);
}

__device__ __forceinline__ float load_f32(const u8* p) {
    return __uint_as_float(load_u32(p));
}

// 4-way int8 dot product with accumulate (sm_61+).
#ifdef STRATA_HOST
static inline i32 dp4a(i32 a, i32 b, i32 c) {
    for (int i = 0; i < 4; i++) c += (i8)((u32)a >> (8 * i)) * (i8)((u32)b >> (8 * i));
    return c;
}
#else
__device__ __forceinline__ i32 dp4a(i32 a, i32 b, i32 c) {
    i32 d;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}
#endif

// x * y rounded once, never fused into a later add (ggml multiplies and adds
// in separate ops, or GCC rounds its products before the adds; NVRTC would
// otherwise contract `a * b + c`).
#ifdef STRATA_HOST
static inline float mul_rn(float a, float b) { return a * b; }
#else
__device__ __forceinline__ float mul_rn(float a, float b) {
    float r;
    asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
#endif

#ifndef STRATA_HOST_CHECK
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = WARP / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// D = A B + C on the warp's tensor cores (mma.sync m16n8k16, sm_80+): A is
// 16 x 16 int8 (row-major), B 16 x 8 int8 (column-major), C and D 16 x 8
// int32. Each lane holds the PTX ISA's fragments; with g = lane / 4 and
// t = lane % 4 (the bytes of a word in k order):
//   a[0] = A[g][4t .. 4t+3], a[1] = A[g+8][4t .. 4t+3], b = B[4t .. 4t+3][g],
//   c[0], c[1] = C[g][2t], C[g][2t+1], c[2], c[3] = C[g+8][2t], C[g+8][2t+1].
// All 32 lanes must execute it together. The emulator runs it as a warp
// collective of the same semantics (emu/runtime.cpp). Older archs compile a
// trap: the backend never launches it there (backend/gemm.rs).
__device__ __forceinline__ void mma_s8_m16n8k16(i32 (&d)[4], const i32 (&a)[2], i32 b, const i32 (&c)[4]) {
#if defined(STRATA_EMU)
    strata_emu_mma_s8_m16n8k16(a, b, c, d);
#elif __CUDA_ARCH__ >= 800
    asm("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5}, {%6}, {%7, %8, %9, %10};"
        : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(b), "r"(c[0]), "r"(c[1]), "r"(c[2]), "r"(c[3]));
#else
    d[0] = c[0], d[1] = c[1], d[2] = c[2], d[3] = c[3];
    asm volatile("trap;");
#endif
}

// Sum over a block of blockDim.x threads (a multiple of 32, at most 1024);
// every thread gets the result. `scratch` holds 32 floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    const int n_warps = (blockDim.x + WARP - 1) / WARP;
    v = lane < n_warps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}
#endif
