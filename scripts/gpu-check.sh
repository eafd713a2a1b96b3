#!/usr/bin/env bash
# Everything the CUDA backend needs checked on a GPU, in one call of the
# device tool (no Rust there, no internet, 10 minutes a command, 64 MiB
# carried, 8 files back). Build here, carry gpu-carry/, run there:
#
#   scripts/gpu-check.sh prepare        # here: release binaries, SmolLM2 cut to 4 layers,
#                                       # llama.cpp's source, openai wheels -> gpu-carry/ (~55 MB)
#   scripts/gpu-check.sh all            # there: every step below, in one call, logs in $OUT/logs.tgz
#
# The steps, also callable one by one there:
#   ops                 every op vs the CPU backend (the kernels/tests/cuda_*.rs in OP_TESTS)
#   greedy              GPU greedy text == CPU greedy text, synth models of every type
#   kvq                 serve on the CPU and the GPU, q8_0 then f16 KV (KVQ_TYPES): texts, log-prob gap
#   sanitize TEST [F]   compute-sanitizer racecheck, initcheck, memcheck over one op test binary
#   llama-build         llama.cpp with CUDA for this GPU (llama-bench only; skipped
#                       when gpu-carry/llama-bench is there from an earlier call)
#   bench [TYPES]       strata bench vs llama-bench on 8B-shaped synth models
#   pipeline [TYPE]     3 `strata worker --gpu 0` stages vs 1, through the OpenAI API
#                       (PIPE_BUDGETS: the runs, each a comma list of stage budgets)
#
# Every step writes its log under $LOGS (default /tmp/strata-gpu-logs); `all`
# packs them into $OUT/logs.tgz after each step.
# `all` ends with a summary table and packs llama-bench (static, split into
# 15 MiB parts) into $OUT: put them in gpu-carry/ and the next call carries
# llama-bench instead of building it.
#
# Dry runs on a CPU box check the script itself: GPU_FLAG=--cpu PRESET=1b
# LLAMA_BENCH=path/to/llama-bench scripts/gpu-check.sh bench Q4_0 (and greedy).
set -uo pipefail
cd "$(dirname "$0")/.."
carry=gpu-carry
out=${OUT:-gpu-out}
logs=${LOGS:-/tmp/strata-gpu-logs}
mkdir -p "$out" "$logs"
step=${1:?usage: scripts/gpu-check.sh prepare|all|ops|greedy|kvq|sanitize|llama-build|bench|pipeline}
shift
gpu_flag=${GPU_FLAG:---gpu 0}
bin=${BIN_DIR:-/tmp/strata-gpu-check}
strata=$bin/strata
models=${BENCH_DIR:-/tmp/strata-bench}
preset=${PRESET:-8b}
llama_bench=${LLAMA_BENCH:-$bin/llama-bench}
# The device image keeps NVRTC and cuBLAS under /usr/local/cuda.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export STRATA_LOG=${STRATA_LOG:-warn}

# The synth model of type $1 (written once, reused by every step).
model() {
    local m="$models/llama-$preset-$1.gguf"
    mkdir -p "$models"
    if [[ ! -f $m ]]; then
        "$strata" synth --arch llama --preset "$preset" --quant "$1" -o "$m.partial" >/dev/null &&
            mv "$m.partial" "$m" || return 1
    fi
    echo "$m"
}

# The carried binaries, unpacked where they run.
unpack() {
    mkdir -p "$bin"
    [[ -x $strata ]] || xz -dc "$carry/strata.xz" >"$strata" && chmod +x "$strata"
    local t
    for t in $OP_TESTS; do
        [[ -x $bin/$t ]] || xz -dc "$carry/$t.xz" >"$bin/$t" && chmod +x "$bin/$t"
    done
    if [[ ! -x $llama_bench ]] && ls "$carry"/llama-bench.xz.* >/dev/null 2>&1; then
        cat "$carry"/llama-bench.xz.* | xz -dc >"$llama_bench" && chmod +x "$llama_bench"
    fi
    if [[ ! -d $bin/llama.cpp && -f $carry/llama.cpp.tar.xz ]]; then
        tar -xJf "$carry/llama.cpp.tar.xz" -C "$bin"
    fi
}

# The kernel tests that run on a real GPU as they do on the emulator.
OP_TESTS="${OP_TESTS:-cuda_ops cuda_matvec cuda_gemm cuda_attention cuda_attention_quant cuda_recurrent cuda_quant_layouts cuda_upload}"

prepare() {
    set -e
    # Two builds: with --example, cargo builds only the example, not strata.
    cargo build --release -p strata
    cargo build --release -p strata-tests --example trim_layers
    rm -rf "$carry" && mkdir -p "$carry"
    strip -o /tmp/strata-stripped target/release/strata
    xz -T0 -6 -c /tmp/strata-stripped >"$carry/strata.xz"
    local exe t
    for t in $OP_TESTS; do
        exe=$(cargo test --release -p strata-kernels --test "$t" --no-run --message-format=json 2>/dev/null |
            python3 -c 'import json,sys; print([j["executable"] for j in map(json.loads, sys.stdin) if j.get("reason")=="compiler-artifact" and j.get("executable") and sys.argv[1] in j["executable"]][0])' "$t")
        strip -o "/tmp/strata-$t" "$exe"
        xz -T0 -6 -c "/tmp/strata-$t" >"$carry/$t.xz"
    done
    local src=${LLAMA_CPP_SRC:-}
    if [[ -z $src ]]; then
        # llama.cpp as llama-cpp-python's sdist on PyPI vendors it. The
        # sdist is fetched as a file: `pip download` would build its
        # metadata (and cmake from source) first.
        local cache=${XDG_CACHE_HOME:-$HOME/.cache}/strata/llama-src
        mkdir -p "$cache"
        if ! ls "$cache"/llama_cpp_python-*/vendor/llama.cpp/CMakeLists.txt >/dev/null 2>&1; then
            python3 - "$cache" <<'EOF'
import json, sys, tarfile, urllib.parse, urllib.request
base = "https://pypi.org/pypi/llama-cpp-python/json"
meta = json.load(urllib.request.urlopen(base))
url = urllib.parse.urljoin(base, [u["url"] for u in meta["urls"] if u["packagetype"] == "sdist"][0])
path = sys.argv[1] + "/sdist.tar.gz"
urllib.request.urlretrieve(url, path)
tarfile.open(path).extractall(sys.argv[1], filter="data")
EOF
        fi
        src=$(echo "$cache"/llama_cpp_python-*/vendor/llama.cpp)
    fi
    local tree=/tmp/strata-llama-tree
    rm -rf "$tree" && mkdir -p "$tree/llama.cpp/ggml/src" "$tree/llama.cpp/tools"
    cp -r "$src"/{src,include,common,vendor,cmake,CMakeLists.txt} "$tree/llama.cpp/"
    # Newer sources add app/ (CMakeLists.txt names it even when it is off).
    [[ -d $src/app ]] && cp -r "$src/app" "$tree/llama.cpp/"
    cp -r "$src"/ggml/{include,cmake,CMakeLists.txt} "$tree/llama.cpp/ggml/" 2>/dev/null || cp -r "$src"/ggml/{include,CMakeLists.txt} "$tree/llama.cpp/ggml/"
    # The CPU and CUDA backends only: the others are not built.
    local f
    for f in "$src"/ggml/src/*; do
        case $(basename "$f") in
        ggml-*) [[ $(basename "$f") =~ ^ggml-(cpu|cuda)$ || -f $f ]] && cp -r "$f" "$tree/llama.cpp/ggml/src/" ;;
        *) cp -r "$f" "$tree/llama.cpp/ggml/src/" ;;
        esac
    done
    for f in "$src"/tools/*; do
        [[ $(basename "$f") == ui ]] || cp -r "$f" "$tree/llama.cpp/tools/"
    done
    tar -cJf "$carry/llama.cpp.tar.xz" -C "$tree" llama.cpp
    # Real weights for the greedy check: SmolLM2 (scripts/fetch-models.sh)
    # cut to 4 layers fits the carry limit, the whole model does not.
    local smol=${XDG_CACHE_HOME:-$HOME/.cache}/strata/models/SmolLM2-135M-Instruct.Q4_1.gguf
    [[ -f $smol ]] || scripts/fetch-models.sh
    mkdir -p "$carry/models"
    target/release/examples/trim_layers "$smol" "$carry/models/smollm2-135m-4-layers.Q4_1.gguf" 4
    # The openai client for the pipeline step (not in the device image;
    # a 1.x release, which needs the httpx the image has).
    rm -rf "$carry/wheels" && mkdir -p "$carry/wheels"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$carry/wheels" openai==1.109.1 pydantic==2.11.9 pydantic-core==2.33.2 typing-extensions \
        annotated-types typing-inspection jiter distro sniffio
    du -sh "$carry" "$carry"/*
    echo "carry: $carry (it is git-ignored); run with carry=[\"$carry\"]"
}

ops() {
    nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv | tee "$logs/gpu.txt"
    # The host too: the op tests compare with the CPU backend, whose SIMD
    # paths follow the CPU's features.
    { uname -r; grep -m1 "model name" /proc/cpuinfo; grep -m1 "^flags" /proc/cpuinfo; } | tee -a "$logs/gpu.txt"
    local rc=0 t
    : >"$logs/ops.log"
    for t in $OP_TESTS; do
        "$bin/$t" --test-threads 1 --nocapture >>"$logs/ops.log" 2>&1 || rc=1
    done
    grep -E "^test |worst|test result" "$logs/ops.log"
    return $rc
}

# compute-sanitizer's race and initialisation checks over one test binary
# (where the machine's runtime lets it read the GPU).
sanitize() {
    local t=${1:-cuda_attention_quant} filter=${2:-} tool
    local cs=/usr/local/cuda/bin/compute-sanitizer
    [[ -x $cs ]] || cs=$(command -v compute-sanitizer) || { echo "no compute-sanitizer"; return 0; }
    [[ -x $bin/$t ]] || { echo "sanitize: $t was not unpacked (OP_TESTS)"; return 0; }
    for tool in racecheck initcheck memcheck; do
        echo "== $tool $t $filter" | tee -a "$logs/sanitize.log"
        # SANITIZE_TIMEOUT: seconds for the three tools together.
        timeout "$(( ${SANITIZE_TIMEOUT:-180} / 3 ))" "$cs" --tool "$tool" "$bin/$t" --test-threads 1 $filter >>"$logs/sanitize.log" 2>&1
        echo "rc=$?" | tee -a "$logs/sanitize.log"
        grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Uninitialized|Invalid|hazard" "$logs/sanitize.log" | tail -5
    done
}

greedy() {
    # The CPU backend matches llama.cpp (tests/data, tested in CI);
    # here the GPU must give the CPU's greedy text for every weight type.
    local dir fails=0 q arch m cpu gpu r
    dir=$(mktemp -d)
    : >"$logs/greedy.txt"
    for q in F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K Q4_K_M; do
        for arch in llama gemma3; do
            m="$dir/$arch-$q.gguf"
            "$strata" synth --arch "$arch" --preset tiny --quant "$q" --layers 4 -o "$m" >/dev/null 2>&1
            cpu=$("$strata" generate -m "$m" -p "The capital of France is" -n 24 --temp 0 --ignore-eos --cpu 2>>"$logs/greedy.log")
            gpu=$("$strata" generate -m "$m" -p "The capital of France is" -n 24 --temp 0 --ignore-eos $gpu_flag 2>>"$logs/greedy.log")
            if [[ -z $cpu ]]; then r=NO-OUTPUT; fails=$((fails + 1));
            elif [[ $cpu == "$gpu" ]]; then r=same; else r=DIFFERENT; fails=$((fails + 1)); fi
            printf '%-7s %-7s %s\n' "$arch" "$q" "$r" | tee -a "$logs/greedy.txt"
            [[ $r == same ]] || printf '  cpu: %q\n  gpu: %q\n' "$cpu" "$gpu" >>"$logs/greedy.txt"
        done
    done
    rm -rf "$dir"
    echo "greedy: $fails of 26 synth models differ" | tee -a "$logs/greedy.txt"
    # Real weights: the greedy text, and perplexity over this repo's README.
    for m in "$carry"/models/*.gguf; do
        [[ -f $m ]] || continue
        cpu=$("$strata" generate -m "$m" -p "The capital of France is" -n 32 --temp 0 --cpu 2>>"$logs/greedy.log")
        gpu=$("$strata" generate -m "$m" -p "The capital of France is" -n 32 --temp 0 $gpu_flag 2>>"$logs/greedy.log")
        [[ -n $cpu && $cpu == "$gpu" ]] && r=same || { r=DIFFERENT; fails=$((fails + 1)); }
        printf '%s greedy: %s\n  cpu: %q\n  gpu: %q\n' "$(basename "$m")" "$r" "$cpu" "$gpu" | tee -a "$logs/greedy.txt"
        for dev in --cpu "$gpu_flag"; do
            printf '%s perplexity %s: ' "$(basename "$m")" "$dev" | tee -a "$logs/greedy.txt"
            "$strata" perplexity -m "$m" -f README.md --chunk 128 $dev 2>>"$logs/greedy.log" | tail -1 | tee -a "$logs/greedy.txt"
        done
    done
    [[ $fails == 0 ]]
}

llama_build() {
    [[ -x $llama_bench ]] && { echo "llama-bench: carried"; return 0; }
    local build=/tmp/llama-build cc
    cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
    # Static, so one file carries to the next call. Flash attention's
    # kernels are left out to halve the build (llama-bench runs -fa 0).
    local gen=()
    command -v ninja >/dev/null && gen=(-G Ninja)
    cmake -S "$bin/llama.cpp" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
        -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$cc" -DGGML_CUDA_FA=OFF -DGGML_CUDA_NCCL=OFF \
        -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF >"$logs/llama-build.log" 2>&1 &&
        cmake --build "$build" --target llama-bench -j "${LLAMA_JOBS:-$(nproc)}" >>"$logs/llama-build.log" 2>&1 &&
        cp "$build/bin/llama-bench" /tmp/llama-bench-built || { tail -30 "$logs/llama-build.log"; return 1; }
    llama_bench=/tmp/llama-bench-built
    echo "llama-bench: built"
}

bench() {
    local types=${1:-Q4_0,Q4_K_M,Q6_K,Q8_0} q m
    for q in ${types//,/ }; do
        m=$(model "$q") || { echo "synth $q failed"; continue; }
        echo "== strata $q" >>"$logs/bench.log"
        timeout "${BENCH_TIMEOUT:-150}" "$strata" bench -m "$m" $gpu_flag -p 512 -n 128 -r 3 >>"$logs/bench.log" 2>&1 ||
            echo "strata bench $q failed or timed out" | tee -a "$logs/bench.log"
    done
    # What the decode graphs save: the first type again, eager (a row of
    # its own in the table).
    q=${types%%,*}
    m=$(model "$q") || return 0
    echo "== strata $q-nographs" >>"$logs/bench.log"
    STRATA_CUDA_GRAPHS=0 timeout "${BENCH_TIMEOUT:-150}" "$strata" bench -m "$m" $gpu_flag -p 512 -n 128 -r 3 >>"$logs/bench.log" 2>&1 ||
        echo "strata bench $q without graphs failed or timed out" | tee -a "$logs/bench.log"
}

llama_bench_all() {
    local types=${1:-Q4_0,Q4_K_M,Q6_K,Q8_0} q m
    for q in ${types//,/ }; do
        m=$(model "$q") || continue
        echo "== llama.cpp $q" >>"$logs/bench.log"
        timeout "${LLAMA_TIMEOUT:-120}" "$llama_bench" -m "$m" -ngl 99 -fa 0 -p 512 -n 128 -r 3 >>"$logs/bench.log" 2>&1 ||
            echo "llama-bench $q failed or timed out" | tee -a "$logs/bench.log"
    done
}

# The table of bench.log: strata's and llama.cpp's pp512 / tg128 per type.
bench_table() {
    python3 - "$logs/bench.log" <<'EOF'
import re, sys
rows, cur, limit = {}, None, {}
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"== (strata|llama.cpp) (\S+)", line)
    if m:
        cur = m.groups(); continue
    m = re.search(r"\|\s*(pp512|tg128)\s*\|\s*([\d.]+)", line)
    if m and cur:
        rows.setdefault(cur[1], {})[(cur[0], m.group(1))] = float(m.group(2))
    m = re.search(r"memory-bound limit: ([\d.]+) tok/s.*at (\d+) GB/s.*tg is (\d+)%", line)
    if m and cur:
        limit[cur[1]] = m.groups()
print("| model | strata pp512 | llama.cpp pp512 | ratio | strata tg128 | llama.cpp tg128 | ratio | strata tg / bound | bound (copy GB/s) |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
r = lambda a, b: f"{a / b:.2f}x" if a and b else "-"
for q, v in rows.items():
    sp, lp = v.get(("strata", "pp512")), v.get(("llama.cpp", "pp512"))
    st, lt = v.get(("strata", "tg128")), v.get(("llama.cpp", "tg128"))
    lim = limit.get(q, ("-", "-", "-"))
    print(f"| {q} | {sp or '-'} | {lp or '-'} | {r(sp, lp)} | {st or '-'} | {lt or '-'} | {r(st, lt)} | {lim[2]}% | {lim[0]} tok/s ({lim[1]}) |")
EOF
}

# Decode tok/s through `strata serve` over N workers on this one GPU, at 1
# and 8 streams (scripts/bench-serve.sh with BUDGETS giving N stages).
pipeline() {
    local q=${1:-Q4_K_M} m
    m=$(model "$q") || return 1
    [[ -d $carry/wheels ]] && { python3 -c 'import openai' 2>/dev/null ||
        python3 -m pip install -q --no-index --no-deps --target /tmp/site "$carry"/wheels/*.whl; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    # One stage holding every layer, then three (PIPE_BUDGETS: the runs, each a budget list).
    for budgets in ${PIPE_BUDGETS:-80GiB 2600MiB,2600MiB,2600MiB}; do
        echo "== $q stages with budgets $budgets" | tee -a "$logs/pipeline.log"
        BIN=$strata BUDGETS=$budgets WORKER_FLAGS="$gpu_flag --model-dir $models" \
            timeout "${PIPE_TIMEOUT:-200}" scripts/bench-serve.sh "$m" 1 -- --rounds 1 --max-tokens 128 >>"$logs/pipeline.log" 2>&1 ||
            echo "pipeline with $budgets failed or timed out" | tee -a "$logs/pipeline.log"
    done
    grep -E "^==|stages|streams|^ +[0-9]" "$logs/pipeline.log" | tail -20
}

# A q8_0 (and f16: KVQ_TYPES) KV cache end to end: `strata serve` on the CPU and on the GPU, the
# same prompt (this README's start), greedy, with log-probabilities: the
# texts and the largest log-probability gap (the contract is 0.05).
kvq() {
    local m=${1:-$carry/models/smollm2-135m-4-layers.Q4_1.gguf}
    local kv
    for kv in ${KVQ_TYPES:-q8_0 f16}; do
    python3 - "$strata" "$m" "$gpu_flag" "$kv" <<'EOF2' | tee -a "$logs/kvq.txt"
import json, subprocess, sys, time, urllib.request
strata, model, gpu, kv = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4]
prompt = open("README.md").read()[:1500]
runs = {}
for name, dev in (("cpu", ["--cpu"]), ("gpu", gpu)):
    p = subprocess.Popen([strata, "serve", "-m", model, *dev, "--listen", "127.0.0.1:18990", "-c", "1024", "-n", "1",
                          "--cache-type-k", kv, "--cache-type-v", kv], stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen("http://127.0.0.1:18990/health"); break
            except Exception:
                time.sleep(0.2)
        req = {"prompt": prompt, "max_tokens": 24, "temperature": 0, "logprobs": 1}
        r = json.load(urllib.request.urlopen(urllib.request.Request(
            "http://127.0.0.1:18990/v1/completions", json.dumps(req).encode(), {"Content-Type": "application/json"})))
        runs[name] = r["choices"][0]["logprobs"]
    finally:
        p.terminate(); p.wait()
c, g = runs["cpu"], runs["gpu"]
same = c["tokens"] == g["tokens"]
n = next((i for i, (a, b) in enumerate(zip(c["tokens"], g["tokens"])) if a != b), len(c["tokens"]))
gap = max((abs(a - b) for a, b in zip(c["token_logprobs"][:n], g["token_logprobs"][:n])), default=0.0)
print(f"{kv} KV, {len(c['tokens'])} tokens: texts {'same' if same else 'differ at token %d' % n}; "
      f"largest log-prob gap over the common tokens {gap:.4f}")
print("  cpu:", json.dumps("".join(c["tokens"])))
print("  gpu:", json.dumps("".join(g["tokens"])))
EOF2
    done
}

pack_logs() {
    tar -czf "$out/logs.tgz" -C "$logs" . 2>/dev/null
}

# Every step in one call, most important first, each cut short so the whole
# ends by $BUDGET seconds (default 420): the device tool's limit, and the
# device time left for a second call, are what bound it.
all() {
    local budget=${BUDGET:-420} types=${TYPES:-Q4_K_M,Q4_0,Q6_K,Q8_0}
    stamp() { echo "[${SECONDS}s] $*" | tee -a "$logs/all.log"; }
    # Seconds left, at most $1.
    left() { local l=$((budget - SECONDS)); ((l > $1)) && l=$1; ((l > 5)) && echo $l || echo 1; }
    llama_build >"$logs/llama-build.out" 2>&1 &
    local builder=$! q first=${types%%,*}
    (model "$first" >/dev/null) &
    local synth=$!
    stamp "ops"; timeout "$(left 150)" bash "$0" ops; stamp "ops rc=$?"; pack_logs
    stamp "greedy"; timeout "$(left 150)" bash "$0" greedy >/dev/null; stamp "greedy rc=$?"; pack_logs
    cat "$logs/greedy.txt"
    if grep -q FAILED "$logs/ops.log" && [[ ${SANITIZE:-1} == 1 ]]; then
        stamp "sanitize"; SANITIZE_TIMEOUT=$(left 90) sanitize cuda_attention_quant quantized_kv_prompt_and_decode_match_cpu; pack_logs
    fi
    wait $synth
    stamp "strata bench $first"; BENCH_TIMEOUT=$(left 100) bench "$first"; pack_logs
    stamp "pipeline"; PIPE_TIMEOUT=$(left 80) pipeline "$first"; pack_logs
    stamp "waiting for llama.cpp's build"
    while kill -0 $builder 2>/dev/null && ((SECONDS < budget - 30)); do sleep 2; done
    cat "$logs/llama-build.out"
    [[ -x /tmp/llama-bench-built ]] && llama_bench=/tmp/llama-bench-built
    if [[ -x $llama_bench ]]; then
        stamp "llama-bench $first"; LLAMA_TIMEOUT=$(left 60) llama_bench_all "$first"; pack_logs
        if [[ $llama_bench == /tmp/llama-bench-built ]]; then
            # Back with the results, to be carried (gpu-carry/) next time.
            xz -T0 -6 -c "$llama_bench" | split -b 15M -d - "$out/llama-bench.xz."
            ls -la "$out"
        fi
    fi
    for q in ${types//,/ }; do
        [[ $q == "$first" ]] && continue
        (($(left 100) >= 60)) || { stamp "no time left for $q"; continue; }
        stamp "bench $q"
        BENCH_TIMEOUT=$(left 60) bench "$q"
        [[ -x $llama_bench ]] && LLAMA_TIMEOUT=$(left 40) llama_bench_all "$q"
        pack_logs
    done
    stamp "done"
    echo "---- summary"
    grep -E "^test .*(ok|FAILED)|test result|worst" "$logs/ops.log"
    grep -vE "^  (cpu|gpu):" "$logs/greedy.txt" | grep -vE " same$"
    grep -E "^==|^ +[0-9]|failed" "$logs/pipeline.log"
    bench_table | tee "$logs/bench.md"
    pack_logs
}

[[ $step == prepare ]] || unpack
case $step in
prepare) prepare ;;
all) all ;;
ops) ops ;;
greedy) greedy ;;
llama-build) llama_build ;;
sanitize) sanitize "$@" ;;
kvq) kvq "$@" ;;
bench) bench "$@"; bench_table ;;
llama-bench) llama_bench_all "$@"; bench_table ;;
pipeline) pipeline "$@" ;;
*)
    echo "unknown step $step" >&2
    exit 2
    ;;
esac
