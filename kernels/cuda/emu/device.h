// The CUDA execution model for kernels compiled as host C++: the strata CUDA
// emulator (kernels/src/cuda/emulator.rs). Included in front of the same
// text NVRTC compiles, so every kernel runs in CI without a GPU.
//
// Each CUDA thread is a fiber (runtime.cpp); `threadIdx` and friends read
// the running fiber's state. `__syncthreads` is a block barrier, a warp
// shuffle a barrier among the lanes of one warp (not the block: a shuffle
// inside `if (warp == 0)` must work). `__shared__` variables are
// thread_local statics: a block runs its fibers on one OS thread.

#pragma once
#include <cmath>
#include <math.h>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#define STRATA_EMU 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __shared__ static thread_local
#define __restrict__ __restrict
#define __launch_bounds__(...)

struct dim3 {
    unsigned x, y, z;
};

// What a fiber knows about itself (runtime.cpp keeps one per CUDA thread).
struct strata_emu_thread {
    dim3 thread_idx, block_idx, block_dim, grid_dim;
};

extern "C" {
const strata_emu_thread* strata_emu_self();
void strata_emu_syncthreads();
void strata_emu_syncwarp(unsigned mask);
// mode: 0 idx, 1 xor, 2 down, 3 up. Returns the 32 bits of the source lane.
unsigned strata_emu_shfl(unsigned mask, unsigned value, int arg, int mode, int width);
unsigned strata_emu_vote(unsigned mask, int predicate);
// mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32: every lane of the warp
// passes its A, B and C fragment registers and gets its D fragment.
void strata_emu_mma_s8_m16n8k16(const int* a, int b, const int* c, int* d);
}

#define threadIdx (strata_emu_self()->thread_idx)
#define blockIdx (strata_emu_self()->block_idx)
#define blockDim (strata_emu_self()->block_dim)
#define gridDim (strata_emu_self()->grid_dim)
#define warpSize 32

inline void __syncthreads() { strata_emu_syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { strata_emu_syncwarp(mask); }

template <class T>
inline T strata_emu_shfl_any(unsigned mask, T v, int arg, int mode, int width) {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "shuffles move 32 or 64 bits");
    unsigned w[sizeof(T) / 4];
    std::memcpy(w, &v, sizeof(T));
    for (unsigned& x : w) x = strata_emu_shfl(mask, x, arg, mode, width);
    std::memcpy(&v, w, sizeof(T));
    return v;
}
template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) { return strata_emu_shfl_any(mask, v, src, 0, width); }
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    return strata_emu_shfl_any(mask, v, lane_mask, 1, width);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return strata_emu_shfl_any(mask, v, (int)delta, 2, width);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return strata_emu_shfl_any(mask, v, (int)delta, 3, width);
}
inline unsigned __ballot_sync(unsigned mask, int p) { return strata_emu_vote(mask, p); }
inline int __any_sync(unsigned mask, int p) { return strata_emu_vote(mask, p) != 0; }
inline int __all_sync(unsigned mask, int p) { return (strata_emu_vote(mask, p) & mask) == mask; }

// Atomics: blocks run on several OS threads at once, so these are real ones.
template <class T>
inline T atomicAdd(T* p, T v) {
    if constexpr (std::is_floating_point_v<T>) {
        T old, desired;
        __atomic_load(p, &old, __ATOMIC_RELAXED);
        do {
            desired = old + v;
        } while (!__atomic_compare_exchange(p, &old, &desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
        return old;
    } else {
        return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
    }
}
template <class T>
inline T atomicMax(T* p, T v) {
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (old < v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    }
    return old;
}
template <class T>
inline T atomicMin(T* p, T v) {
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (old > v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    }
    return old;
}
template <class T>
inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
template <class T>
inline T atomicCAS(T* p, T expected, T desired) {
    __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return expected;
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// The device math library, as the host's (results agree to an ulp or two,
// which is what the op tests' tolerances allow for).
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline void sincosf_(float x, float* s, float* c) {
    *s = std::sin(x);
    *c = std::cos(x);
}
#define sincosf sincosf_
// CUDA's powf is not correctly rounded (up to 4 ulp), and the host's is: a
// kernel whose result hung on powf's last bit passed here and failed on an
// H200 (RoPE's theta at position 70000). The emulator's is an ulp off the
// host's, so such a kernel fails here too.
// Results CUDA gives exactly (y = 0, x = 1, zeros, infinities, NaN) stay.
inline float powf_(float x, float y) {
    const float r = std::pow(x, y);
    if (y == 0.0f || x == 1.0f || r == 0.0f || !std::isfinite(r)) return r;
    return std::nextafter(r, INFINITY);
}
#define powf powf_
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline int __float2int_rn(float x) { return (int)std::nearbyint(x); }
inline int __float2int_rz(float x) { return (int)x; }
inline float __int_as_float(int x) { float f; std::memcpy(&f, &x, 4); return f; }
inline float __uint_as_float(unsigned x) { float f; std::memcpy(&f, &x, 4); return f; }
inline int __float_as_int(float f) { int x; std::memcpy(&x, &f, 4); return x; }
inline unsigned __float_as_uint(float f) { unsigned x; std::memcpy(&x, &f, 4); return x; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int max(int a, int b) { return a > b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }

// The table the runtime looks kernels up in: each module's source ends
// with STRATA_EMU_KERNELS(name, ...) (emulator.rs appends it), which
// turns cuLaunchKernel's array of argument pointers into a typed call.
typedef void (*strata_emu_invoke)(void** args);
struct strata_emu_kernel {
    const char* name;
    strata_emu_invoke invoke;
    // The size of each argument, so that stream capture can keep a copy of
    // their values (as the driver does from the CUBIN's parameter info).
    unsigned n_args;
    const std::size_t* arg_sizes;
};
template <class... A>
struct strata_emu_arg_sizes {
    static constexpr std::size_t value[sizeof...(A) + 1] = {sizeof(std::remove_reference_t<A>)..., 0};
};
template <class... A>
constexpr unsigned strata_emu_count_of(void (*)(A...)) {
    return sizeof...(A);
}
template <class... A>
constexpr const std::size_t* strata_emu_sizes_of(void (*)(A...)) {
    return strata_emu_arg_sizes<A...>::value;
}
template <class... A, std::size_t... I>
inline void strata_emu_call_with(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*static_cast<std::remove_reference_t<A>*>(args[I])...);
}
template <class... A>
inline void strata_emu_call(void (*f)(A...), void** args) {
    strata_emu_call_with(f, args, std::index_sequence_for<A...>{});
}
#define STRATA_EMU_KERNEL(name) \
    {#name, [](void** args) { strata_emu_call(&name, args); }, strata_emu_count_of(&name), strata_emu_sizes_of(&name)},
// strata_emu_touch_tls makes the calling OS thread's copy of the module's
// thread_locals (its __shared__ variables) exist, so the runtime can poison
// them before each block.
#define STRATA_EMU_KERNELS_BEGIN                                                 \
    static thread_local char strata_emu_tls_touch;                               \
    extern "C" void* strata_emu_touch_tls() { return &strata_emu_tls_touch; }    \
    extern "C" const strata_emu_kernel strata_emu_kernels[] = {
#define STRATA_EMU_KERNELS_END {nullptr, nullptr}};
