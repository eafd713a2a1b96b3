#!/usr/bin/env bash
# The CUDA kernel tests (every kernels/tests/cuda_*.rs that runs kernels)
# again on the CUDA emulator built with AddressSanitizer: device memory is
# then ASan's heap, with redzones on both sides of every buffer, so an
# out-of-bounds index in a kernel fails even where the plain emulator's
# guard page would not see it (a read before a buffer's start, or inside its
# last page). libasan must be loaded first, so the test executables run
# directly, not under cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
asan=$(${CXX:-c++} -print-file-name=libasan.so)
[[ -f $asan ]] || { echo "libasan.so not found (${CXX:-c++} -print-file-name)" >&2; exit 1; }
tests=(cuda_ops cuda_recurrent cuda_emulator cuda_emulator_mma cuda_emulator_graphs cuda_matvec cuda_gemm cuda_attention cuda_upload)
mapfile -t exes < <(cargo test -p strata-kernels "${tests[@]/#/--test=}" --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys; [print(j["executable"]) for j in map(json.loads, sys.stdin) if j.get("reason")=="compiler-artifact" and j.get("executable")]')
[[ ${#exes[@]} == "${#tests[@]}" ]] || { echo "expected ${#tests[@]} test executables, got: ${exes[*]}" >&2; exit 1; }
for exe in "${exes[@]}"; do
    echo "== $(basename "$exe") under AddressSanitizer"
    # Rust's own threads keep their signal stacks (use_sigaltstack=0); Rust
    # memory is not ASan's concern here (detect_leaks=0).
    LD_PRELOAD=$asan ASAN_OPTIONS=detect_leaks=0:use_sigaltstack=0 \
        STRATA_CUDA_EMULATOR=1 STRATA_CUDA_EMU_CXXFLAGS="-fsanitize=address -fno-omit-frame-pointer" \
        "$exe" "$@"
done
