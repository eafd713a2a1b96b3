// The strata CUDA emulator: the part of the CUDA driver API that cudarc and
// CudaBackend call, implemented on the CPU. Built as a shared library whose
// SONAME is libcuda.so (kernels/src/cuda/emulator.rs compiles and loads it
// before cudarc looks for a driver), so the CUDA backend runs unchanged.
//
// - Device memory is host memory, each allocation ending on an unmapped
//   page (a read or write past its end faults, and the fault names the
//   kernel, block and thread) and filled with NaN bytes until written.
//   Built with -fsanitize=address, it is AddressSanitizer's heap instead
//   (redzones on both sides).
// - Modules are kernel sources compiled as host C++ (device.h in front)
//   into shared objects; cuModuleLoad opens one.
// - A launch runs blocks on a pool of OS threads, each block's CUDA threads
//   as fibers (Boost.Context) in a shuffled order. `__syncthreads` and warp
//   shuffles are barriers; one that not every thread reaches, or a deadlock,
//   fails the launch with a message naming the kernel and the threads.
// - Tensor-core mma.sync is a warp collective too: the last lane to arrive
//   assembles the matrices from the 32 lanes' fragments in the PTX ISA's
//   layout, multiplies, and hands each lane its part of D.
// - Streams and events are synchronous: every call completes before it
//   returns.
// - Stream capture records launches, device copies, memsets and frees into
//   a graph that cuGraphLaunch replays (graph.h).

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdarg>
#include <cstdio>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <boost/context/detail/fcontext.hpp>
#include <dlfcn.h>
#include <link.h>
#include <sys/mman.h>
#include <unistd.h>

#include "device.h"

namespace fctx = boost::context::detail;

// Under AddressSanitizer (STRATA_CUDA_EMU_CXXFLAGS=-fsanitize=address, with
// libasan preloaded), every stack switch is announced to it.
#if defined(__SANITIZE_ADDRESS__)
#define STRATA_EMU_ASAN 1
extern "C" {
void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom, size_t size);
void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old, size_t* size_old);
void __asan_unpoison_memory_region(void const volatile* addr, size_t size);
}
#endif

// Memory we map ourselves (device memory, fiber stacks) may reuse addresses
// whose shadow still says "stack frame" from an earlier use.
static void unpoison(void* p, size_t n) {
#ifdef STRATA_EMU_ASAN
    __asan_unpoison_memory_region(p, n);
#else
    (void)p;
    (void)n;
#endif
}

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef void* CUcontext;
typedef void* CUstream;
typedef void* CUevent;

enum : int {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_FILE_NOT_FOUND = 301,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_LAUNCH_FAILED = 719,
    CUDA_ERROR_NOT_SUPPORTED = 801,
    CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED = 900,
    CUDA_ERROR_STREAM_CAPTURE_INVALIDATED = 901,
};

static const char DEVICE_NAME[] = "strata CUDA emulator";
static const int WARP_LANES = 32;
static const size_t STACK_BYTES = 256 << 10;

// ---- errors ----------------------------------------------------------------

static std::mutex error_lock;
static std::string last_error = "no error";

static CUresult fail(CUresult code, const char* fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    std::fprintf(stderr, "strata CUDA emulator: %s\n", buf);
    std::lock_guard<std::mutex> g(error_lock);
    last_error = buf;
    return code;
}

// ---- device memory ---------------------------------------------------------

struct Graph;

struct Allocation {
    char* map;
    size_t map_bytes;
    size_t bytes;
    // Made while a graph was captured: the graph owns it (it lives as long
    // as the graph), and each launch of the graph allocates it anew.
    Graph* graph = nullptr;
    // For a graph's allocation: allocated by the last launch and not freed.
    bool live = false;
    // The device whose memory it counts against.
    int device = 0;
};

// ---- devices ---------------------------------------------------------------

// STRATA_CUDA_EMU_DEVICES=N shows N devices (default 1, at most 16), so one
// process can run a box's several GPUs. They share the host's memory (a
// pointer of one is valid on every other, as with peer access), but each
// has its own memory size and can be lost alone (STRATA_CUDA_EMU_FAIL_FILE).
static const int MAX_DEVICES = 16;

// The figures of a setting: decimal, comma-separated, blanks around each
// allowed, a trailing comma too. Unset or blank: none. A typo: false, and
// cuInit refuses it (rather than a device of 0 MiB).
static bool figures(const char* name, std::vector<unsigned long long>& out) {
    out.clear();
    const char* v = std::getenv(name);
    if (!v) return true;
    for (;;) {
        while (std::isspace((unsigned char)*v)) v++;
        if (!*v) return true;
        if (!std::isdigit((unsigned char)*v)) return false;
        char* end = nullptr;
        out.push_back(std::strtoull(v, &end, 10));
        v = end;
        while (std::isspace((unsigned char)*v)) v++;
        if (*v == ',') v++;
        else if (*v) return false;
    }
}

static int device_count() {
    static const int n = [] {
        std::vector<unsigned long long> f;
        bool ok = figures("STRATA_CUDA_EMU_DEVICES", f);
        return ok && f.size() == 1 ? (int)std::min<unsigned long long>(std::max<unsigned long long>(f[0], 1), MAX_DEVICES) : 1;
    }();
    return n;
}

// The device of this thread's current context (cuCtxSetCurrent), as the
// driver keeps one per thread.
static thread_local int current_device = 0;

// STRATA_CUDA_EMU_MEM_MIB: each device's memory in MiB, one figure for all
// ("350") or one per device ("350,350,120", the last repeating); 16 GiB
// when unset.
static size_t total_bytes(int device) {
    // Read once: every allocation asks.
    static const std::vector<unsigned long long> mib = [] {
        std::vector<unsigned long long> f;
        return figures("STRATA_CUDA_EMU_MEM_MIB", f) ? f : std::vector<unsigned long long>{};
    }();
    if (mib.empty()) return (size_t)16384 << 20;
    return (size_t)mib[std::min<size_t>(device, mib.size() - 1)] << 20;
}

// A GPU pulled at a moment a test chooses: once the file that
// STRATA_CUDA_EMU_FAIL_FILE names exists, every launch on a device it lists
// (ordinals, one per line) fails.
static bool device_pulled(int device) {
    static const char* path = std::getenv("STRATA_CUDA_EMU_FAIL_FILE");
    if (!path) return false;
    FILE* f = std::fopen(path, "r");
    if (!f) return false;
    bool listed = false;
    int d = 0;
    while (!listed && std::fscanf(f, "%d", &d) == 1) listed = d == device;
    std::fclose(f);
    return listed;
}

static std::mutex mem_lock;
static std::map<uintptr_t, Allocation> allocations;  // by start address
static size_t allocated_bytes[MAX_DEVICES] = {};

// The allocation holding [p, p + n), or null.
static const Allocation* find_allocation(uintptr_t p, size_t n) {
    std::lock_guard<std::mutex> g(mem_lock);
    auto it = allocations.upper_bound(p);
    if (it == allocations.begin()) return nullptr;
    --it;
    if (p + n > it->first + it->second.bytes) return nullptr;
    return &it->second;
}

static CUresult device_alloc(CUdeviceptr* out, size_t bytes) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const int device = current_device;
    {
        std::lock_guard<std::mutex> g(mem_lock);
        if (allocated_bytes[device] + bytes > total_bytes(device))
            return fail(CUDA_ERROR_OUT_OF_MEMORY, "device %d out of memory: %zu bytes asked, %zu of %zu in use", device,
                        bytes, allocated_bytes[device], total_bytes(device));
    }
#ifdef STRATA_EMU_ASAN
    // AddressSanitizer's heap: redzones on both sides, freed memory held back.
    void* heap = nullptr;
    if (posix_memalign(&heap, 256, std::max<size_t>(bytes, 1)))
        return fail(CUDA_ERROR_OUT_OF_MEMORY, "no host memory for %zu bytes", bytes);
    std::memset(heap, 0xff, bytes);
    {
        std::lock_guard<std::mutex> g(mem_lock);
        allocations[(uintptr_t)heap] = Allocation{nullptr, 0, bytes, nullptr, false, device};
        allocated_bytes[device] += bytes;
    }
    *out = (CUdeviceptr)(uintptr_t)heap;
    return CUDA_SUCCESS;
#endif
    // The data ends where an unmapped page begins (start 16-byte aligned,
    // so only a size that is not a multiple of 16 leaves slack).
    const size_t body = (std::max<size_t>(bytes, 1) + page - 1) / page * page;
    const size_t map_bytes = body + page;
    char* map = (char*)mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) return fail(CUDA_ERROR_OUT_OF_MEMORY, "mmap of %zu bytes failed", map_bytes);
    unpoison(map, body);
    mprotect(map + body, page, PROT_NONE);
    char* start = map + body - ((bytes + 15) / 16 * 16);
    std::memset(start, 0xff, bytes);  // NaN in f32 and f16: unwritten reads show
    std::lock_guard<std::mutex> g(mem_lock);
    allocations[(uintptr_t)start] = Allocation{map, map_bytes, bytes, nullptr, false, device};
    allocated_bytes[device] += bytes;
    *out = (CUdeviceptr)(uintptr_t)start;
    return CUDA_SUCCESS;
}

static CUresult device_free(CUdeviceptr p) {
    std::lock_guard<std::mutex> g(mem_lock);
    auto it = allocations.find((uintptr_t)p);
    if (it == allocations.end()) return fail(CUDA_ERROR_INVALID_VALUE, "free of %#llx: not an allocation", p);
    if (it->second.map) {
        unpoison(it->second.map, it->second.map_bytes - (size_t)sysconf(_SC_PAGESIZE));
        munmap(it->second.map, it->second.map_bytes);
    } else {
        std::free((void*)it->first);
    }
    allocated_bytes[it->second.device] -= it->second.bytes;
    allocations.erase(it);
    return CUDA_SUCCESS;
}

static CUresult check_range(const char* what, CUdeviceptr p, size_t n) {
    if (n == 0 || find_allocation((uintptr_t)p, n)) return CUDA_SUCCESS;
    return fail(CUDA_ERROR_INVALID_VALUE, "%s of %zu bytes at %#llx is outside every allocation", what, n, p);
}

// ---- modules ---------------------------------------------------------------

struct Module {
    void* handle;
    std::string path;
    size_t tls_bytes;  // its thread_locals: the kernels' __shared__ variables
    void* (*touch_tls)();
};

// The size of the TLS segment of the object loaded at `base`.
static size_t tls_segment_bytes(ElfW(Addr) base) {
    struct Query {
        ElfW(Addr) base;
        size_t bytes;
    } q{base, 0};
    dl_iterate_phdr(
        [](dl_phdr_info* info, size_t, void* data) {
            auto* q = (Query*)data;
            if (info->dlpi_addr != q->base) return 0;
            for (int i = 0; i < info->dlpi_phnum; i++)
                if (info->dlpi_phdr[i].p_type == PT_TLS) q->bytes = info->dlpi_phdr[i].p_memsz;
            return 1;
        },
        &q);
    return q.bytes;
}

// Shared memory starts each block as NaN bytes, as memory nothing wrote:
// a value read before a barrier made it visible is then wrong, not stale.
static void poison_shared(const Module* m) {
    if (!m->tls_bytes) return;
    m->touch_tls();
    void* block = nullptr;
    if (dlinfo(m->handle, RTLD_DI_TLS_DATA, &block) != 0 || !block) return;
    // The TLS block may sit in the thread's stack mapping, whose shadow
    // AddressSanitizer keeps for stack frames: it is the module's own.
    unpoison(block, m->tls_bytes);
    std::memset(block, 0xff, m->tls_bytes);
}

struct Function {
    const strata_emu_kernel* kernel;
    Module* module;
};

// ---- fibers and blocks -----------------------------------------------------

enum class Wait { Ready, Block, Warp, Done };
enum class WarpOp { Shfl, Vote, Sync, Mma };

struct Fiber {
    strata_emu_thread self;
    fctx::fcontext_t ctx;
    Wait wait;
    unsigned linear;
    // The warp operation this fiber waits in.
    WarpOp op;
    unsigned mask, value, result;
    int arg, mode, width;
    // An mma's fragment registers: in (A, B, C), out (D).
    unsigned frag_in[7], frag_out[4];
};

struct Launch {
    const Function* function;
    dim3 grid, block;
    void** args;
    unsigned long long seed;
    std::atomic<unsigned long long> next_block{0};
    std::atomic<unsigned long long> blocks_left{0};
    std::atomic<bool> failed{false};
    std::mutex done_lock;
    std::condition_variable done;
};

// One OS thread's block runner: its fibers' stacks are kept between blocks.
struct BlockRunner {
    std::vector<Fiber> fibers;
    std::vector<char*> stacks;
    fctx::fcontext_t scheduler = nullptr;
    // The scheduler's own stack, as AddressSanitizer reported it.
    const void* scheduler_stack = nullptr;
    size_t scheduler_stack_bytes = 0;
    Fiber* current = nullptr;
    Launch* launch = nullptr;
    std::string error;
    ~BlockRunner() {
        const size_t guard = (size_t)sysconf(_SC_PAGESIZE);
        for (char* s : stacks) {
            unpoison(s + guard, STACK_BYTES - guard);
            munmap(s, STACK_BYTES);
        }
    }
};

static thread_local BlockRunner this_thread_runner;
static thread_local BlockRunner* runner = nullptr;

extern "C" const strata_emu_thread* strata_emu_self() {
    return &runner->current->self;
}

// A fiber's side of a switch to and back from the scheduler (`last`: it
// will not come back).
static void fiber_leaving(bool last) {
#ifdef STRATA_EMU_ASAN
    static thread_local void* fake;
    __sanitizer_start_switch_fiber(last ? nullptr : &fake, runner->scheduler_stack, runner->scheduler_stack_bytes);
#else
    (void)last;
#endif
}
static void fiber_entered() {
#ifdef STRATA_EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &runner->scheduler_stack, &runner->scheduler_stack_bytes);
#endif
}

// Back to the scheduler; returns when the scheduler runs this fiber again.
static void yield_to_scheduler() {
    fiber_leaving(false);
    fctx::transfer_t t = fctx::jump_fcontext(runner->scheduler, nullptr);
    fiber_entered();
    runner->scheduler = t.fctx;
}

extern "C" void strata_emu_syncthreads() {
    runner->current->wait = Wait::Block;
    yield_to_scheduler();
}

static unsigned warp_op(WarpOp op, unsigned mask, unsigned value, int arg, int mode, int width) {
    Fiber* f = runner->current;
    f->wait = Wait::Warp;
    f->op = op;
    f->mask = mask;
    f->value = value;
    f->arg = arg;
    f->mode = mode;
    f->width = width;
    yield_to_scheduler();
    return f->result;
}

extern "C" void strata_emu_syncwarp(unsigned mask) {
    warp_op(WarpOp::Sync, mask, 0, 0, 0, WARP_LANES);
}

extern "C" unsigned strata_emu_shfl(unsigned mask, unsigned value, int arg, int mode, int width) {
    return warp_op(WarpOp::Shfl, mask, value, arg, mode, width);
}

extern "C" unsigned strata_emu_vote(unsigned mask, int predicate) {
    return warp_op(WarpOp::Vote, mask, predicate != 0, 0, 0, WARP_LANES);
}

extern "C" void strata_emu_mma_s8_m16n8k16(const int* a, int b, const int* c, int* d) {
    Fiber* f = runner->current;
    const int in[7] = {a[0], a[1], b, c[0], c[1], c[2], c[3]};
    std::memcpy(f->frag_in, in, sizeof in);
    // mma.sync.aligned has no mask: the whole warp executes it.
    warp_op(WarpOp::Mma, 0xffffffffu, 0, 0, 0, WARP_LANES);
    std::memcpy(d, f->frag_out, sizeof f->frag_out);
}

// mma.m16n8k16.row.col.s32.s8.s8.s32 over the 32 lanes' fragments, as the
// PTX ISA lays them out ("Matrix Fragments for mma.m16n8k16 with integer
// type"), with groupID = lane / 4, threadID_in_group = lane % 4 and element
// i of a fragment in byte i % 4 of register i / 4:
//   A a0..a7 (2 registers): row groupID + 8 * (i >= 4), col threadID_in_group * 4 + i % 4;
//   B b0..b3 (1 register):  row threadID_in_group * 4 + i, col groupID;
//   C, D c0..c3 (4 s32):    row groupID + 8 * (i >= 2), col threadID_in_group * 2 + i % 2.
// D = A B + C with 32-bit wraparound (no .satfinite).
static void mma_s8_m16n8k16(Fiber* lanes) {
    int8_t A[16][16], B[16][8];
    int32_t C[16][8];
    for (int l = 0; l < WARP_LANES; l++) {
        const unsigned* r = lanes[l].frag_in;  // a0a1 | b | c0..c3
        const int group = l / 4, tig = l % 4;
        for (int i = 0; i < 8; i++) A[group + 8 * (i >= 4)][tig * 4 + i % 4] = (int8_t)(r[i / 4] >> (8 * (i % 4)));
        for (int i = 0; i < 4; i++) B[tig * 4 + i][group] = (int8_t)(r[2] >> (8 * i));
        for (int i = 0; i < 4; i++) C[group + 8 * (i >= 2)][tig * 2 + i % 2] = (int32_t)r[3 + i];
    }
    for (int l = 0; l < WARP_LANES; l++) {
        const int group = l / 4, tig = l % 4;
        for (int i = 0; i < 4; i++) {
            const int row = group + 8 * (i >= 2), col = tig * 2 + i % 2;
            int64_t sum = C[row][col];
            for (int k = 0; k < 16; k++) sum += (int32_t)A[row][k] * B[k][col];
            lanes[l].frag_out[i] = (uint32_t)sum;
        }
    }
}

static void fiber_main(fctx::transfer_t t) {
    fiber_entered();
    runner->scheduler = t.fctx;
    Fiber* f = (Fiber*)t.data;
    runner->launch->function->kernel->invoke(runner->launch->args);
    f->wait = Wait::Done;
    fiber_leaving(true);
    fctx::jump_fcontext(runner->scheduler, nullptr);
}

static std::string thread_name(const Fiber& f) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "thread (%u,%u,%u) of block (%u,%u,%u)", f.self.thread_idx.x, f.self.thread_idx.y,
                  f.self.thread_idx.z, f.self.block_idx.x, f.self.block_idx.y, f.self.block_idx.z);
    return buf;
}

// If every lane in the waiting lanes' mask has arrived, completes the warp
// operation and makes its lanes ready. Returns false on a misuse (set in
// runner->error).
static bool try_complete_warp(unsigned warp, std::vector<Fiber*>& ready) {
    auto& fibers = runner->fibers;
    const unsigned first = warp * WARP_LANES;
    const unsigned lanes = std::min<unsigned>(WARP_LANES, (unsigned)fibers.size() - first);
    Fiber* lead = nullptr;
    for (unsigned l = 0; l < lanes; l++)
        if (fibers[first + l].wait == Wait::Warp) lead = &fibers[first + l];
    if (!lead) return true;
    const unsigned mask = lead->mask;
    for (unsigned l = 0; l < lanes; l++) {
        Fiber& f = fibers[first + l];
        const bool in_mask = (mask >> l) & 1;
        if (f.wait == Wait::Warp && (f.mask != mask || f.op != lead->op)) {
            runner->error = "lanes of one warp wait in different warp operations (masks " + std::to_string(mask) +
                            " and " + std::to_string(f.mask) + "), " + thread_name(f);
            return false;
        }
        if (!in_mask) continue;
        if (f.wait == Wait::Done) {
            runner->error = "a warp operation names a lane that has exited: " + thread_name(f);
            return false;
        }
        if (f.wait != Wait::Warp) return true;  // still on its way
    }
    if (lead->op == WarpOp::Mma) {
        if (lanes < (unsigned)WARP_LANES) {
            runner->error = "mma.sync in a warp of " + std::to_string(lanes) + " threads (it needs all 32), " +
                            thread_name(*lead);
            return false;
        }
        mma_s8_m16n8k16(&fibers[first]);
        for (unsigned l = 0; l < lanes; l++) {
            fibers[first + l].wait = Wait::Ready;
            ready.push_back(&fibers[first + l]);
        }
        return true;
    }
    unsigned ballot = 0;
    for (unsigned l = 0; l < lanes; l++)
        if (fibers[first + l].wait == Wait::Warp && fibers[first + l].value) ballot |= 1u << l;
    for (unsigned l = 0; l < lanes; l++) {
        Fiber& f = fibers[first + l];
        if (f.wait != Wait::Warp) continue;
        if (f.op == WarpOp::Shfl) {
            const int w = f.width, base = (int)l & ~(w - 1);
            int src;
            switch (f.mode) {
            case 0: src = base + (f.arg & (w - 1)); break;
            case 1: src = (int)l ^ f.arg; break;
            case 2: src = (int)l + f.arg; break;
            default: src = (int)l - f.arg; break;
            }
            if (src < base || src >= base + w) src = (int)l;  // outside the segment: own value
            if (src >= (int)lanes || !((mask >> src) & 1)) {
                runner->error = "a shuffle reads lane " + std::to_string(src) + ", outside its mask, in " + thread_name(f);
                return false;
            }
            f.result = fibers[first + src].value;
        } else {
            f.result = ballot;
        }
    }
    for (unsigned l = 0; l < lanes; l++) {
        Fiber& f = fibers[first + l];
        if (f.wait == Wait::Warp) {
            f.wait = Wait::Ready;
            ready.push_back(&f);
        }
    }
    return true;
}

// Runs one block to the end; false (with runner->error) on a misuse.
static bool run_block(Launch& L, dim3 block_idx, std::minstd_rand& rng) {
    const unsigned n = L.block.x * L.block.y * L.block.z;
    auto& fibers = runner->fibers;
    fibers.assign(n, Fiber{});
    while (runner->stacks.size() < n) {
        const size_t page = (size_t)sysconf(_SC_PAGESIZE);
        char* s = (char*)mmap(nullptr, STACK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (s == MAP_FAILED) {
            runner->error = "no memory for fiber stacks";
            return false;
        }
        mprotect(s, page, PROT_NONE);  // a stack overflow faults
        runner->stacks.push_back(s);
    }
    poison_shared(L.function->module);
    std::vector<Fiber*> ready;
    for (unsigned i = 0; i < n; i++) {
        Fiber& f = fibers[i];
        f.linear = i;
        f.self.thread_idx = dim3{i % L.block.x, (i / L.block.x) % L.block.y, i / (L.block.x * L.block.y)};
        f.self.block_idx = block_idx;
        f.self.block_dim = L.block;
        f.self.grid_dim = L.grid;
        const size_t guard = (size_t)sysconf(_SC_PAGESIZE);
        unpoison(runner->stacks[i] + guard, STACK_BYTES - guard);  // frames of the last block's fibers
        f.ctx = fctx::make_fcontext(runner->stacks[i] + STACK_BYTES, STACK_BYTES, fiber_main);
        f.wait = Wait::Ready;
        ready.push_back(&f);
    }
    std::vector<Fiber*> next;
    while (true) {
        std::shuffle(ready.begin(), ready.end(), rng);
        next.clear();
        for (Fiber* f : ready) {
            runner->current = f;
#ifdef STRATA_EMU_ASAN
            void* fake = nullptr;
            __sanitizer_start_switch_fiber(&fake, runner->stacks[f->linear], STACK_BYTES);
#endif
            fctx::transfer_t t = fctx::jump_fcontext(f->ctx, f);
#ifdef STRATA_EMU_ASAN
            __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
            f->ctx = t.fctx;
            runner->current = nullptr;
            if (f->wait == Wait::Warp && !try_complete_warp(f->linear / WARP_LANES, next)) return false;
            if (f->wait == Wait::Done) {
                // An exited lane may complete its warp's operation or fail it.
                if (!try_complete_warp(f->linear / WARP_LANES, next)) return false;
            }
        }
        ready.swap(next);
        if (!ready.empty()) continue;
        unsigned done = 0, at_block = 0;
        const Fiber* waiting = nullptr;
        for (Fiber& f : fibers) {
            if (f.wait == Wait::Done) done++;
            if (f.wait == Wait::Block) at_block++;
            if (f.wait == Wait::Warp && !waiting) waiting = &f;
        }
        if (done == n) return true;
        if (waiting) {
            runner->error = "deadlock: " + thread_name(*waiting) +
                            " waits in a warp operation its other lanes never reach";
            return false;
        }
        if (done > 0) {
            const Fiber* exited = nullptr;
            for (Fiber& f : fibers)
                if (f.wait == Wait::Done) exited = &f;
            runner->error = "__syncthreads not reached by every thread of the block: " + thread_name(*exited) +
                            " exited while " + std::to_string(at_block) + " others wait";
            return false;
        }
        for (Fiber& f : fibers) {
            f.wait = Wait::Ready;
            ready.push_back(&f);
        }
    }
}

static void run_blocks(Launch& L) {
    runner = &this_thread_runner;
    runner->launch = &L;
    const unsigned long long total = (unsigned long long)L.grid.x * L.grid.y * L.grid.z;
    while (!L.failed.load()) {
        const unsigned long long b = L.next_block.fetch_add(1);
        if (b >= total) break;
        dim3 idx{(unsigned)(b % L.grid.x), (unsigned)((b / L.grid.x) % L.grid.y),
                 (unsigned)(b / ((unsigned long long)L.grid.x * L.grid.y))};
        std::minstd_rand rng((unsigned)(L.seed ^ (b * 0x9E3779B97F4A7C15ull)) | 1u);
        const bool ok = run_block(L, idx, rng);
        if (!ok && !L.failed.exchange(true))
            fail(CUDA_ERROR_LAUNCH_FAILED, "kernel %s, block (%u,%u,%u) (order seed %llu): %s", L.function->kernel->name,
                 idx.x, idx.y, idx.z, L.seed, runner->error.c_str());
        if (L.blocks_left.fetch_sub(1) == 1 || !ok) {
            std::lock_guard<std::mutex> g(L.done_lock);
            L.done.notify_all();
        }
    }
    runner->launch = nullptr;
}

// A pool of OS threads that take blocks of the launches queued to it.
class Pool {
  public:
    Pool() {
        const char* v = std::getenv("STRATA_CUDA_EMU_THREADS");
        unsigned n = v ? (unsigned)std::atoi(v) : std::thread::hardware_concurrency();
        for (unsigned i = 1; i < std::max(1u, n); i++) workers_.emplace_back([this] { work(); });
    }
    void run(Launch& L) {
        const unsigned long long total = (unsigned long long)L.grid.x * L.grid.y * L.grid.z;
        L.blocks_left = total;
        if (total > 1 && !workers_.empty()) {
            std::lock_guard<std::mutex> g(lock_);
            queue_.push_back(&L);
            wake_.notify_all();
        }
        run_blocks(L);  // the caller takes blocks too
        std::unique_lock<std::mutex> g(L.done_lock);
        L.done.wait(g, [&] { return L.blocks_left.load() == 0 || L.failed.load(); });
        g.unlock();
        // Workers may still hold a pointer to L: wait until they drop it.
        std::unique_lock<std::mutex> q(lock_);
        queue_.erase(std::remove(queue_.begin(), queue_.end(), &L), queue_.end());
        idle_.wait(q, [&] { return busy_with_(&L) == 0; });
    }

  private:
    void work() {
        std::unique_lock<std::mutex> g(lock_);
        while (true) {
            wake_.wait(g, [&] { return !queue_.empty(); });
            Launch* L = queue_.front();
            const unsigned long long total = (unsigned long long)L->grid.x * L->grid.y * L->grid.z;
            if (L->next_block.load() >= total || L->failed.load()) {
                queue_.pop_front();
                continue;
            }
            active_.push_back(L);
            g.unlock();
            run_blocks(*L);
            g.lock();
            active_.erase(std::find(active_.begin(), active_.end(), L));
            idle_.notify_all();
        }
    }
    size_t busy_with_(Launch* L) { return (size_t)std::count(active_.begin(), active_.end(), L); }

    std::vector<std::thread> workers_;
    std::mutex lock_;
    std::condition_variable wake_, idle_;
    std::deque<Launch*> queue_;
    std::vector<Launch*> active_;
};

static Pool& pool() {
    static Pool* p = new Pool();  // never destroyed: workers outlive main
    return *p;
}

// A fault inside a kernel names it, then aborts (as a GPU's illegal address
// would end the context).
static void on_fault(int sig, siginfo_t* info, void*) {
    char buf[512];
    if (runner && runner->current && runner->launch) {
        const Fiber& f = *runner->current;
        std::snprintf(buf, sizeof buf,
                      "strata CUDA emulator: kernel %s, %s: invalid memory access at %p (past the end of a device "
                      "allocation, freed memory, or a fiber stack overflow)\n",
                      runner->launch->function->kernel->name, thread_name(f).c_str(), info->si_addr);
    } else {
        std::snprintf(buf, sizeof buf, "strata CUDA emulator: invalid memory access at %p outside any kernel\n",
                      info->si_addr);
    }
    ssize_t w = write(2, buf, std::strlen(buf));
    (void)w;
    signal(sig, SIG_DFL);
    raise(sig);
}

static void install_fault_handler() {
#ifdef STRATA_EMU_ASAN
    return;  // AddressSanitizer reports faults itself, on its own signal stack
#endif
    static std::once_flag once;
    std::call_once(once, [] {
        static char alt[1 << 16];
        stack_t ss{};
        ss.ss_sp = alt;
        ss.ss_size = sizeof alt;
        sigaltstack(&ss, nullptr);
        struct sigaction sa {};
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigaction(SIGSEGV, &sa, nullptr);
        sigaction(SIGBUS, &sa, nullptr);
    });
}

// ---- the driver API --------------------------------------------------------

// Runs one launch to completion (launches are synchronous).
static CUresult run_kernel(const Function* fn, dim3 grid, dim3 block, void** args) {
    static std::atomic<unsigned long long> launches{0};
    static const unsigned long long base_seed = [] {
        const char* v = std::getenv("STRATA_CUDA_EMU_SEED");
        return v ? std::strtoull(v, nullptr, 10) : (unsigned long long)std::random_device{}();
    }();
    // A device that fails after N launches (tests of what a worker does
    // when its GPU goes away): STRATA_CUDA_EMU_FAIL_AFTER=N.
    static const unsigned long long fail_after = [] {
        const char* v = std::getenv("STRATA_CUDA_EMU_FAIL_AFTER");
        return v ? std::strtoull(v, nullptr, 10) : ~0ull;
    }();
    if (launches.load() >= fail_after)
        return fail(CUDA_ERROR_LAUNCH_FAILED, "kernel %s: the device is lost (STRATA_CUDA_EMU_FAIL_AFTER=%llu)",
                    fn->kernel->name, fail_after);
    if (device_pulled(current_device))
        return fail(CUDA_ERROR_LAUNCH_FAILED, "kernel %s: device %d is lost (STRATA_CUDA_EMU_FAIL_FILE)",
                    fn->kernel->name, current_device);
    Launch L;
    L.function = fn;
    L.grid = grid;
    L.block = block;
    L.args = args;
    L.seed = base_seed + launches.fetch_add(1);
    pool().run(L);
    return L.failed.load() ? CUDA_ERROR_LAUNCH_FAILED : CUDA_SUCCESS;
}

#include "graph.h"

// One context per device (the primary one); the handle is its slot here.
static int contexts[MAX_DEVICES];
static int fake_stream;

extern "C" {

CUresult cuInit(unsigned) {
    install_fault_handler();
    std::vector<unsigned long long> f;
    if (!figures("STRATA_CUDA_EMU_DEVICES", f) || f.size() > 1 || (f.size() == 1 && (f[0] < 1 || f[0] > (unsigned)MAX_DEVICES)))
        return fail(CUDA_ERROR_INVALID_VALUE, "STRATA_CUDA_EMU_DEVICES=%s: not a number of devices from 1 to %d",
                    std::getenv("STRATA_CUDA_EMU_DEVICES"), MAX_DEVICES);
    const char* mib = std::getenv("STRATA_CUDA_EMU_MEM_MIB");
    if (!figures("STRATA_CUDA_EMU_MEM_MIB", f))
        return fail(CUDA_ERROR_INVALID_VALUE,
                    "STRATA_CUDA_EMU_MEM_MIB=%s: not MiB figures (\"350\", or one per device: \"350,350,120\")",
                    mib);
    return CUDA_SUCCESS;
}
CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetCount(int* n) {
    *n = device_count();
    return CUDA_SUCCESS;
}
CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (ordinal < 0 || ordinal >= device_count())
        return fail(CUDA_ERROR_INVALID_VALUE, "device %d: the emulator has %d (STRATA_CUDA_EMU_DEVICES)", ordinal,
                    device_count());
    *d = ordinal;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    std::snprintf(name, (size_t)len, "%s", DEVICE_NAME);
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetUuid(char* uuid, CUdevice d) {
    std::memcpy(uuid, "strata-emulator!", 16);
    uuid[15] = (char)('a' + d);
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetUuid_v2(char* uuid, CUdevice d) { return cuDeviceGetUuid(uuid, d); }
CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice d) {
    *bytes = total_bytes(d);
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetAttribute(int* v, int attr, CUdevice) {
    switch (attr) {
    case 1: *v = 1024; break;                     // max threads per block
    case 2: case 3: *v = 1024; break;             // max block dims x, y
    case 4: *v = 64; break;                       // max block dim z
    case 5: *v = 0x7fffffff; break;               // max grid dim x
    case 6: case 7: *v = 65535; break;            // max grid dims y, z
    case 8: *v = 48 << 10; break;                 // shared memory per block
    case 10: *v = WARP_LANES; break;              // warp size
    case 16: *v = 4; break;                       // multiprocessors
    case 75: *v = 0; break;                       // compute capability: 0.0 marks the emulator
    case 76: *v = 0; break;
    case 115: *v = 1; break;                      // memory pools: yes (cudarc then allocates and frees
                                                  // stream-ordered, as on a GPU)
    default: *v = 0; break;
    }
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice d) {
    if (d < 0 || d >= device_count()) return fail(CUDA_ERROR_INVALID_VALUE, "no device %d", d);
    *c = &contexts[d];
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return CUDA_SUCCESS; }
CUresult cuCtxSetCurrent(CUcontext c) {
    if (c == nullptr) return CUDA_SUCCESS;
    const uintptr_t p = (uintptr_t)c, first = (uintptr_t)&contexts[0];
    const int d = p >= first ? (int)((p - first) / sizeof(int)) : -1;
    if (d < 0 || d >= device_count() || p != (uintptr_t)&contexts[d])
        return fail(CUDA_ERROR_INVALID_VALUE, "not a context of the emulator");
    current_device = d;
    return CUDA_SUCCESS;
}
CUresult cuCtxGetCurrent(CUcontext* c) {
    *c = &contexts[current_device];
    return CUDA_SUCCESS;
}
CUresult cuCtxSynchronize() { return refuse_in_capture("cuCtxSynchronize"); }
CUresult cuCtxSetFlags(unsigned) { return CUDA_SUCCESS; }

CUresult cuStreamCreate(CUstream* s, unsigned) {
    *s = &fake_stream;
    return CUDA_SUCCESS;
}
CUresult cuStreamCreateWithPriority(CUstream* s, unsigned, int) { return cuStreamCreate(s, 0); }
CUresult cuStreamSynchronize(CUstream) { return refuse_in_capture("cuStreamSynchronize"); }
CUresult cuStreamQuery(CUstream) { return CUDA_SUCCESS; }
CUresult cuStreamDestroy_v2(CUstream) { return CUDA_SUCCESS; }
CUresult cuStreamWaitEvent(CUstream, CUevent, unsigned) { return CUDA_SUCCESS; }
CUresult cuLaunchHostFunc(CUstream, void (*fn)(void*), void* data) {
    if (CUresult r = refuse_in_capture("cuLaunchHostFunc")) return r;
    fn(data);
    return CUDA_SUCCESS;
}

CUresult cuEventCreate(CUevent* e, unsigned) {
    *e = new double(0);
    return CUDA_SUCCESS;
}
CUresult cuEventRecord(CUevent e, CUstream) {
    *(double*)e = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
    return CUDA_SUCCESS;
}
CUresult cuEventQuery(CUevent) { return CUDA_SUCCESS; }
CUresult cuEventSynchronize(CUevent) { return CUDA_SUCCESS; }
CUresult cuEventElapsedTime(float* ms, CUevent a, CUevent b) {
    *ms = (float)(*(double*)b - *(double*)a);
    return CUDA_SUCCESS;
}
CUresult cuEventElapsedTime_v2(float* ms, CUevent a, CUevent b) { return cuEventElapsedTime(ms, a, b); }
CUresult cuEventDestroy_v2(CUevent e) {
    delete (double*)e;
    return CUDA_SUCCESS;
}

// Under capture, an allocation belongs to the graph (graph.h), as the
// GPU's stream-ordered ones do.
CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t n) { return capture_alloc(p, n); }
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t n, CUstream) { return capture_alloc(p, n); }
CUresult cuMemFree_v2(CUdeviceptr p) { return capture_free(p); }
CUresult cuMemFreeAsync(CUdeviceptr p, CUstream) { return capture_free(p); }
// The device's memory pool: one handle; its attributes change nothing
// (every allocation is its own mapping, returned when freed).
static int fake_pool;
CUresult cuDeviceGetDefaultMemPool(void** pool, CUdevice) {
    *pool = &fake_pool;
    return CUDA_SUCCESS;
}
CUresult cuMemPoolSetAttribute(void*, int, void*) { return CUDA_SUCCESS; }
CUresult cuMemPoolTrimTo(void*, size_t) { return CUDA_SUCCESS; }
CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    std::lock_guard<std::mutex> g(mem_lock);
    *total = total_bytes(current_device);
    *free_bytes = *total - allocated_bytes[current_device];
    return CUDA_SUCCESS;
}
CUresult cuMemHostAlloc(void** p, size_t n, unsigned) {
    *p = std::malloc(std::max<size_t>(n, 1));
    return *p ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
CUresult cuMemFreeHost(void* p) {
    std::free(p);
    return CUDA_SUCCESS;
}
CUresult cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, CUstream) {
    if (CUresult r = check_range("memset", p, n)) return r;
    if (capture_memset(p, v, n)) return CUDA_SUCCESS;
    std::memset((void*)(uintptr_t)p, v, n);
    return CUDA_SUCCESS;
}
CUresult cuMemsetD8_v2(CUdeviceptr p, unsigned char v, size_t n) { return cuMemsetD8Async(p, v, n, nullptr); }
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, CUstream) {
    if (CUresult r = refuse_in_capture("a copy from host memory")) return r;
    if (CUresult r = check_range("copy to the device", dst, n)) return r;
    std::memcpy((void*)(uintptr_t)dst, src, n);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) { return cuMemcpyHtoDAsync_v2(dst, src, n, nullptr); }
CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream) {
    if (CUresult r = refuse_in_capture("a copy to host memory")) return r;
    if (CUresult r = check_range("copy from the device", src, n)) return r;
    std::memcpy(dst, (const void*)(uintptr_t)src, n);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) { return cuMemcpyDtoHAsync_v2(dst, src, n, nullptr); }
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream) {
    if (CUresult r = check_range("device copy source", src, n)) return r;
    if (CUresult r = check_range("device copy destination", dst, n)) return r;
    if (capture_copy(dst, src, n)) return CUDA_SUCCESS;
    std::memmove((void*)(uintptr_t)dst, (const void*)(uintptr_t)src, n);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) { return cuMemcpyDtoDAsync_v2(dst, src, n, nullptr); }

// A module is a shared object built from kernel sources by emulator.rs.
CUresult cuModuleLoad(void** module, const char* path) {
    void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) return fail(CUDA_ERROR_INVALID_IMAGE, "loading module %s: %s", path, dlerror());
    if (!dlsym(h, "strata_emu_kernels")) {
        dlclose(h);
        return fail(CUDA_ERROR_INVALID_IMAGE, "%s has no kernel table (not built for the emulator)", path);
    }
    link_map* lm = nullptr;
    dlinfo(h, RTLD_DI_LINKMAP, &lm);
    auto touch = (void* (*)())dlsym(h, "strata_emu_touch_tls");
    *module = new Module{h, path, lm && touch ? tls_segment_bytes(lm->l_addr) : 0, touch};
    return CUDA_SUCCESS;
}
CUresult cuModuleLoadData(void**, const void*) {
    return fail(CUDA_ERROR_INVALID_IMAGE, "the emulator loads modules built as host code (cuModuleLoad), not CUBIN or PTX");
}
CUresult cuModuleGetFunction(void** function, void* module, const char* name) {
    Module* m = (Module*)module;
    auto* table = (const strata_emu_kernel*)dlsym(m->handle, "strata_emu_kernels");
    for (const strata_emu_kernel* k = table; k->name; k++) {
        if (std::strcmp(k->name, name) == 0) {
            *function = new Function{k, m};
            return CUDA_SUCCESS;
        }
    }
    return CUDA_ERROR_NOT_FOUND;  // callers probe modules for names
}
CUresult cuModuleUnload(void* module) {
    delete (Module*)module;  // the shared object stays: functions may outlive it
    return CUDA_SUCCESS;
}
CUresult cuFuncGetAttribute(int* v, int, void*) {
    *v = 0;
    return CUDA_SUCCESS;
}
CUresult cuFuncSetAttribute(void*, int, int) { return CUDA_SUCCESS; }
CUresult cuFuncSetCacheConfig(void*, int) { return CUDA_SUCCESS; }

CUresult cuLaunchKernel(void* function, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared_bytes, CUstream, void** args, void** extra) {
    auto* fn = (Function*)function;
    if (extra) return fail(CUDA_ERROR_NOT_SUPPORTED, "kernel %s: launch with `extra` arguments", fn->kernel->name);
    if (shared_bytes) return fail(CUDA_ERROR_NOT_SUPPORTED, "kernel %s: dynamic shared memory", fn->kernel->name);
    const unsigned long long threads = (unsigned long long)bx * by * bz;
    if (threads == 0 || threads > 1024 || bz > 64 || gx == 0 || gy == 0 || gz == 0 || gy > 65535 || gz > 65535)
        return fail(CUDA_ERROR_INVALID_VALUE, "kernel %s: launch of grid (%u,%u,%u) x block (%u,%u,%u) is invalid",
                    fn->kernel->name, gx, gy, gz, bx, by, bz);
    if (capture_launch(fn, dim3{gx, gy, gz}, dim3{bx, by, bz}, args)) return CUDA_SUCCESS;
    return run_kernel(fn, dim3{gx, gy, gz}, dim3{bx, by, bz}, args);
}

// The last failure's own words for a launch failure; the usual names else.
CUresult cuGetErrorString(CUresult e, const char** s) {
    static thread_local std::string copy;
    if (e == CUDA_ERROR_LAUNCH_FAILED || e == CUDA_ERROR_INVALID_VALUE || e == CUDA_ERROR_OUT_OF_MEMORY ||
        e == CUDA_ERROR_INVALID_IMAGE || e == CUDA_ERROR_NOT_SUPPORTED || e == CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED ||
        e == CUDA_ERROR_STREAM_CAPTURE_INVALIDATED) {
        std::lock_guard<std::mutex> g(error_lock);
        copy = last_error;
    } else {
        copy = "CUDA error " + std::to_string(e);
    }
    *s = copy.c_str();
    return CUDA_SUCCESS;
}
CUresult cuGetErrorName(CUresult e, const char** s) {
    static thread_local std::string name;
    name = "CUDA_ERROR_" + std::to_string(e);
    *s = name.c_str();
    return CUDA_SUCCESS;
}

}  // extern "C"
