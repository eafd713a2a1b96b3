// Stream capture and CUDA graphs for the emulator (included by runtime.cpp,
// whose memory and launch code it uses).
//
// Between cuStreamBeginCapture and cuStreamEndCapture nothing runs: kernel
// launches (with a copy of their argument values, as the driver keeps),
// device-to-device copies, memsets and frees are recorded, in order, into a
// graph, and cuGraphLaunch replays them. What the GPU refuses under capture
// is refused here too, so a capture that works here is one that works
// there:
// - a copy from or to host memory, or a synchronisation, fails the call and
//   invalidates the capture (cuStreamEndCapture then fails);
// - memory allocated under capture belongs to the graph: each launch
//   allocates it anew (filled with NaN bytes again), a free recorded in the
//   graph releases it during the launch, and a launch while an allocation
//   of the previous launch is still held fails, as the driver's does;
// - a free under capture of memory the graph does not own is replayed as a
//   free on every launch (so a second launch frees it twice, and fails).
// - the legacy default stream (a null CUstream) cannot be captured.
// A capture belongs to the thread that began it (the emulator's streams
// are all one, so this stands for the capturing stream, in the mode
// CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).

struct GraphNode {
    enum class Kind { Kernel, Copy, Set, Free } kind;
    const Function* fn = nullptr;
    dim3 grid{}, block{};
    std::vector<std::vector<char>> args;  // each argument's bytes
    CUdeviceptr dst = 0, src = 0;
    size_t bytes = 0;
    unsigned char value = 0;
};

struct Graph {
    std::vector<GraphNode> nodes;
    std::vector<CUdeviceptr> owned;  // its allocations
    int refs = 1;                    // the graph and each instantiation
    bool launched = false;
};

static std::mutex capture_lock;
static thread_local Graph* capturing = nullptr;
static thread_local std::string capture_broken;  // why the capture is invalid, if it is

static void graph_release(Graph* g) {
    if (--g->refs > 0) return;
    for (CUdeviceptr p : g->owned) device_free(p);
    delete g;
}

// Under capture: records the launch and returns true.
static bool capture_launch(const Function* fn, dim3 grid, dim3 block, void** args) {
    std::lock_guard<std::mutex> g(capture_lock);
    if (!capturing) return false;
    GraphNode n;
    n.kind = GraphNode::Kind::Kernel;
    n.fn = fn;
    n.grid = grid;
    n.block = block;
    for (unsigned i = 0; i < fn->kernel->n_args; i++) {
        const char* v = (const char*)args[i];
        n.args.emplace_back(v, v + fn->kernel->arg_sizes[i]);
    }
    capturing->nodes.push_back(std::move(n));
    return true;
}

// Under capture: records `n` and returns true.
static bool record_node(GraphNode n) {
    std::lock_guard<std::mutex> g(capture_lock);
    if (!capturing) return false;
    capturing->nodes.push_back(std::move(n));
    return true;
}

static bool capture_copy(CUdeviceptr dst, CUdeviceptr src, size_t bytes) {
    GraphNode n;
    n.kind = GraphNode::Kind::Copy;
    n.dst = dst;
    n.src = src;
    n.bytes = bytes;
    return record_node(std::move(n));
}

static bool capture_memset(CUdeviceptr dst, unsigned char value, size_t bytes) {
    GraphNode n;
    n.kind = GraphNode::Kind::Set;
    n.dst = dst;
    n.value = value;
    n.bytes = bytes;
    return record_node(std::move(n));
}

// What the driver refuses under capture: fails the call, and the capture.
static CUresult refuse_in_capture(const char* what) {
    std::lock_guard<std::mutex> g(capture_lock);
    if (!capturing) return CUDA_SUCCESS;
    if (capture_broken.empty()) capture_broken = what;
    return fail(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "%s during stream capture", what);
}

static CUresult capture_alloc(CUdeviceptr* out, size_t bytes) {
    std::lock_guard<std::mutex> g(capture_lock);
    if (CUresult r = device_alloc(out, bytes)) return r;
    if (capturing) {
        std::lock_guard<std::mutex> m(mem_lock);
        Allocation& a = allocations[(uintptr_t)*out];
        a.graph = capturing;
        a.live = true;
        capturing->owned.push_back(*out);
    }
    return CUDA_SUCCESS;
}

static CUresult capture_free(CUdeviceptr p) {
    std::lock_guard<std::mutex> g(capture_lock);
    Graph* owner = nullptr;
    {
        std::lock_guard<std::mutex> m(mem_lock);
        auto it = allocations.find((uintptr_t)p);
        if (it != allocations.end()) owner = it->second.graph;
        if (owner && !capturing) {
            // A graph's allocation freed after a launch: the graph keeps it.
            if (!it->second.live) return fail(CUDA_ERROR_INVALID_VALUE, "free of %#llx: freed already", p);
            it->second.live = false;
            return CUDA_SUCCESS;
        }
    }
    if (!capturing) return device_free(p);
    GraphNode n;
    n.kind = GraphNode::Kind::Free;
    n.dst = p;
    capturing->nodes.push_back(std::move(n));
    return CUDA_SUCCESS;
}

// Replays one graph: its allocations made anew, then its nodes in order.
static CUresult graph_launch(Graph* graph) {
    {
        std::lock_guard<std::mutex> m(mem_lock);
        for (CUdeviceptr p : graph->owned) {
            Allocation& a = allocations[(uintptr_t)p];
            if (graph->launched && a.live)
                return fail(CUDA_ERROR_INVALID_VALUE,
                            "graph launch: its allocation %#llx from the last launch was not freed", p);
            a.live = true;
            std::memset((void*)(uintptr_t)p, 0xff, a.bytes);
        }
    }
    graph->launched = true;
    for (GraphNode& n : graph->nodes) {
        switch (n.kind) {
        case GraphNode::Kind::Kernel: {
            std::vector<void*> args;
            for (auto& a : n.args) args.push_back(a.data());
            if (CUresult r = run_kernel(n.fn, n.grid, n.block, args.data())) return r;
            break;
        }
        case GraphNode::Kind::Copy:
            std::memmove((void*)(uintptr_t)n.dst, (const void*)(uintptr_t)n.src, n.bytes);
            break;
        case GraphNode::Kind::Set:
            std::memset((void*)(uintptr_t)n.dst, n.value, n.bytes);
            break;
        case GraphNode::Kind::Free: {
            bool own = std::find(graph->owned.begin(), graph->owned.end(), n.dst) != graph->owned.end();
            if (!own) {
                if (CUresult r = device_free(n.dst)) return r;
                break;
            }
            std::lock_guard<std::mutex> m(mem_lock);
            Allocation& a = allocations[(uintptr_t)n.dst];
            a.live = false;
            std::memset((void*)(uintptr_t)n.dst, 0xff, a.bytes);  // a later read sees NaN
            break;
        }
        }
    }
    return CUDA_SUCCESS;
}

extern "C" {

typedef void* CUgraph;
typedef void* CUgraphExec;

CUresult cuStreamBeginCapture_v2(CUstream stream, int) {
    // As the driver: the legacy default stream cannot be captured.
    if (!stream) return fail(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "stream capture on the legacy default stream");
    std::lock_guard<std::mutex> g(capture_lock);
    if (capturing) return fail(CUDA_ERROR_INVALID_VALUE, "stream capture begun twice");
    capturing = new Graph();
    capture_broken.clear();
    return CUDA_SUCCESS;
}

CUresult cuStreamEndCapture(CUstream, CUgraph* out) {
    std::lock_guard<std::mutex> g(capture_lock);
    if (!capturing) return fail(CUDA_ERROR_INVALID_VALUE, "stream capture ended but not begun");
    Graph* graph = capturing;
    capturing = nullptr;
    if (!capture_broken.empty()) {
        std::string why = capture_broken;
        graph_release(graph);
        *out = nullptr;
        return fail(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, "stream capture invalidated by %s", why.c_str());
    }
    *out = graph;
    return CUDA_SUCCESS;
}

// status: 0 none, 1 active, 2 invalidated.
CUresult cuStreamIsCapturing(CUstream, int* status) {
    std::lock_guard<std::mutex> g(capture_lock);
    *status = !capturing ? 0 : capture_broken.empty() ? 1 : 2;
    return CUDA_SUCCESS;
}

CUresult cuGraphInstantiateWithFlags(CUgraphExec* exec, CUgraph graph, unsigned long long) {
    std::lock_guard<std::mutex> g(capture_lock);
    ((Graph*)graph)->refs++;
    *exec = graph;
    return CUDA_SUCCESS;
}

CUresult cuGraphLaunch(CUgraphExec exec, CUstream) {
    if (CUresult r = refuse_in_capture("cuGraphLaunch")) return r;
    return graph_launch((Graph*)exec);
}

CUresult cuGraphUpload(CUgraphExec, CUstream) { return CUDA_SUCCESS; }

CUresult cuGraphExecDestroy(CUgraphExec exec) {
    std::lock_guard<std::mutex> g(capture_lock);
    graph_release((Graph*)exec);
    return CUDA_SUCCESS;
}

CUresult cuGraphDestroy(CUgraph graph) {
    std::lock_guard<std::mutex> g(capture_lock);
    graph_release((Graph*)graph);
    return CUDA_SUCCESS;
}

}  // extern "C"
