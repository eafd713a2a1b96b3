#!/usr/bin/env bash
# Everything the CUDA backend needs checked on a GPU, in steps that fit the
# device tool (no Rust there, no internet, 10 minutes a command, 64 MiB
# carried). Build here, carry gpu-carry/, run there:
#
#   scripts/gpu-check.sh prepare          # here: release binaries + llama.cpp's source, into gpu-carry/
#   scripts/gpu-check.sh ops              # there: every op vs the CPU backend (kernels/tests/cuda_ops.rs)
#   scripts/gpu-check.sh greedy           # there: GPU greedy text == CPU greedy text, synthetic models of every type
#   scripts/gpu-check.sh bench [TYPES]    # there: strata bench vs llama-bench (CUDA) on 8B-shaped models
#
# Each step writes its log and a summary under $OUT (or ./gpu-out). `bench`
# builds llama.cpp with CUDA for the device's architecture first (cached in
# gpu-carry/llama-build while the machine stays warm).
#
# Dry runs on a CPU box check the script itself: GPU_FLAG=--cpu, PRESET=1b,
# LLAMA_BENCH=path/to/an/existing/llama-bench.
set -euo pipefail
cd "$(dirname "$0")/.."
carry=gpu-carry
out=${OUT:-gpu-out}
mkdir -p "$out"
step=${1:?usage: scripts/gpu-check.sh prepare|ops|greedy|bench}
gpu_flag=${GPU_FLAG:---gpu 0}
shift

case $step in
prepare)
    cargo build --release -p strata
    mkdir -p "$carry"
    strip -o "$carry/strata" target/release/strata
    exe=$(cargo test --release -p strata-kernels --test cuda_ops --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys; print([j["executable"] for j in map(json.loads, sys.stdin) if j.get("reason")=="compiler-artifact" and j.get("executable") and "cuda_ops" in j["executable"]][0])')
    strip -o "$carry/cuda_ops" "$exe"
    src=${LLAMA_CPP_SRC:-}
    if [[ -z $src ]]; then
        # llama.cpp as llama-cpp-python's sdist on PyPI vendors it.
        tmp=$(mktemp -d)
        python3 -m pip download --no-deps --no-binary :all: llama-cpp-python -d "$tmp" -q
        tar -xzf "$tmp"/llama_cpp_python-*.tar.gz -C "$tmp"
        src=$(echo "$tmp"/llama_cpp_python-*/vendor/llama.cpp)
    fi
    rm -rf "$carry/llama.cpp" && mkdir -p "$carry/llama.cpp/ggml/src" "$carry/llama.cpp/tools"
    cp -r "$src"/{src,include,common,vendor,cmake,CMakeLists.txt} "$carry/llama.cpp/"
    cp -r "$src"/ggml/{include,cmake,CMakeLists.txt} "$carry/llama.cpp/ggml/" 2>/dev/null || cp -r "$src"/ggml/{include,CMakeLists.txt} "$carry/llama.cpp/ggml/"
    # The CPU and CUDA backends only: the others are not built.
    for f in "$src"/ggml/src/*; do
        case $(basename "$f") in
        ggml-*) [[ $(basename "$f") =~ ^ggml-(cpu|cuda)$ || -f $f ]] && cp -r "$f" "$carry/llama.cpp/ggml/src/" ;;
        *) cp -r "$f" "$carry/llama.cpp/ggml/src/" ;;
        esac
    done
    for t in "$src"/tools/*; do
        [[ $(basename "$t") == ui ]] || cp -r "$t" "$carry/llama.cpp/tools/"
    done
    du -sh "$carry" "$carry"/*
    echo "carry: $carry (it is git-ignored); run the steps with carry=[\"$carry\"]"
    ;;

ops)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
    "$carry/cuda_ops" --ignored --test-threads 1 --nocapture 2>&1 | tee "$out/ops.log"
    ;;

greedy)
    # The CPU backend matches llama.cpp (shared/reference, tested in CI);
    # here the GPU must give the CPU's greedy text for every weight type.
    dir=$(mktemp -d)
    fails=0
    for q in F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K Q4_K_M; do
        for arch in llama gemma3; do
            m="$dir/$arch-$q.gguf"
            "$carry/strata" synth --arch "$arch" --preset tiny --quant "$q" --layers 4 -o "$m" >/dev/null 2>&1
            cpu=$("$carry/strata" generate -m "$m" -p "The capital of France is" -n 24 --temp 0 --ignore-eos --cpu 2>/dev/null)
            gpu=$("$carry/strata" generate -m "$m" -p "The capital of France is" -n 24 --temp 0 --ignore-eos $gpu_flag 2>>"$out/greedy.log")
            if [[ -z $cpu ]]; then r=NO-OUTPUT; fails=$((fails + 1));
            elif [[ $cpu == "$gpu" ]]; then r=same; else r=DIFFERENT; fails=$((fails + 1)); fi
            printf '%-7s %-7s %s\n' "$arch" "$q" "$r" | tee -a "$out/greedy.txt"
        done
    done
    for m in "$carry"/models/*.gguf; do
        [[ -f $m ]] || continue
        gpu=$("$carry/strata" generate -m "$m" -p "The capital of France is" -n 32 --temp 0 $gpu_flag 2>>"$out/greedy.log")
        printf '%s: %q\n' "$(basename "$m")" "$gpu" | tee -a "$out/greedy.txt"
    done
    [[ $fails == 0 ]]
    ;;

bench)
    types=${1:-Q4_0,Q4_K_M,Q6_K,Q8_0}
    build="$carry/llama-build"
    llama_bench=${LLAMA_BENCH:-$build/bin/llama-bench}
    if [[ ! -x $llama_bench ]]; then
        cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
        cmake -S "$carry/llama.cpp" -B "$build" -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$cc" \
            -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
            -DCMAKE_BUILD_TYPE=Release >"$out/cmake.log" 2>&1
        cmake --build "$build" --target llama-bench -j "$(nproc)" >>"$out/cmake.log" 2>&1
    fi
    dir=${BENCH_DIR:-/tmp/strata-bench}
    mkdir -p "$dir"
    echo "| model | strata pp512 | llama.cpp pp512 | ratio | strata tg128 | llama.cpp tg128 | ratio |" | tee "$out/bench.md"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |" | tee -a "$out/bench.md"
    for q in ${types//,/ }; do
        m="$dir/llama-${PRESET:-8b}-$q.gguf"
        [[ -f $m ]] || "$carry/strata" synth --arch llama --preset "${PRESET:-8b}" --quant "$q" -o "$m" >/dev/null 2>&1
        s=$("$carry/strata" bench -m "$m" $gpu_flag -p 512 -n 128 -r 3 2>>"$out/bench.log" | tee -a "$out/bench.log" | awk -F'|' '/pp512|tg128/ {print $6}' | awk '{print $1}')
        l=$("$llama_bench" -m "$m" -ngl 99 -p 512 -n 128 -r 3 2>>"$out/bench.log" | awk -F'|' '/pp512|tg128/ {print $(NF-1)}' | awk '{print $1}')
        read -r s_pp s_tg <<<"$(echo $s)"
        read -r l_pp l_tg <<<"$(echo $l)"
        awk -v p="${PRESET:-8b} $q" -v sp="$s_pp" -v lp="$l_pp" -v st="$s_tg" -v lt="$l_tg" \
            'BEGIN { printf "| %s | %s | %s | %.2fx | %s | %s | %.2fx |\n", p, sp, lp, sp / lp, st, lt, st / lt }' | tee -a "$out/bench.md"
        grep -h 'memory-bound limit' "$out/bench.log" | tail -1 | tee -a "$out/bench.md" || true
    done
    ;;

*)
    echo "unknown step $step: prepare, ops, greedy or bench" >&2
    exit 2
    ;;
esac
