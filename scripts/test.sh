#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: fetches the real test models
# into the cache (scripts/fetch-models.sh), the openai Python client and
# NVRTC (nvidia-cuda-nvrtc) from PyPI, Boost.Context (for the CUDA
# emulator) and Chromium with its driver (the web page test) from apt, then
# cargo test over the workspace, the CUDA kernel tests under AddressSanitizer
# (scripts/test-cuda-asan.sh), then the aarch64 kernel tests under qemu
# (scripts/test-aarch64.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export STRATA_MODELS=${STRATA_MODELS:-$HOME/.cache/strata/models}
# A fresh build gains nothing from incremental state; it only costs disk.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
scripts/fetch-models.sh "$STRATA_MODELS" >/dev/null
# A PyPI package for this user, wherever pip allows it.
pip_install() {
    python3 -m pip install --quiet --user "$1" 2>/dev/null \
        || python3 -m pip install --quiet --user --break-system-packages "$1" \
        || python3 -m pip install --quiet --break-system-packages "$1"
}
# The API tests drive `strata serve` with the real openai client from PyPI.
python3 -c 'import openai' 2>/dev/null || pip_install openai
# Structured-output and tool-call tests validate replies independently.
python3 -c 'import jsonschema' 2>/dev/null || pip_install jsonschema
# The CUDA kernels are compiled in a test with NVRTC from PyPI (no GPU needed).
nvrtc_lib() {
    python3 -c 'import nvidia, os; print(next(os.path.join(p, "cu13", "lib") for p in nvidia.__path__ if os.path.isdir(os.path.join(p, "cu13", "lib"))))' 2>/dev/null
}
nvrtc_lib >/dev/null || pip_install 'nvidia-cuda-nvrtc>=13,<14'
export LD_LIBRARY_PATH="$(nvrtc_lib)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The CUDA emulator (every CUDA kernel run on the CPU) builds with the C++
# compiler and Boost.Context.
# (The header alone is not enough: the dev package brings the link library.)
if [ ! -f /usr/include/boost/context/detail/fcontext.hpp ] \
    || ! ls /usr/lib/*/libboost_context.so >/dev/null 2>&1; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo -n"
    $sudo_cmd apt-get install -y -q libboost-context-dev >/dev/null 2>&1 \
        || { $sudo_cmd apt-get update -q >/dev/null && $sudo_cmd apt-get install -y -q libboost-context-dev >/dev/null; }
fi
# The web page test (cli/tests/web_page.rs) drives Debian's headless
# Chromium through chromedriver; it fails, not skips, without them.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo -n"
    $sudo_cmd apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
        || { $sudo_cmd apt-get update -q >/dev/null && $sudo_cmd apt-get install -y -q chromium chromium-driver >/dev/null; }
fi
cargo test --workspace --no-fail-fast "$@"
# The kernels compile with NVRTC 12 too (what a CUDA 12 driver needs).
nvrtc12_lib() {
    # (Checks the library itself: an uninstall can leave the package folder.)
    python3 -c 'import nvidia, os; print(next(d for p in nvidia.__path__ for d in [os.path.join(p, "cuda_nvrtc", "lib")] if os.path.isfile(os.path.join(d, "libnvrtc.so.12"))))' 2>/dev/null
}
nvrtc12_lib >/dev/null || pip_install 'nvidia-cuda-nvrtc-cu12>=12.4,<13'
LD_LIBRARY_PATH="$(nvrtc12_lib)" STRATA_NVRTC_MAJOR=12 cargo test -p strata-kernels --test cuda_nvrtc
# The CUDA kernel tests again, on the emulator built with AddressSanitizer.
scripts/test-cuda-asan.sh
# The NEON kernels: cross-compiled for aarch64 and run under qemu.
scripts/test-aarch64.sh
