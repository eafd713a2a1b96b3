#!/usr/bin/env bash
# Builds ggml-dump against a llama.cpp source tree that has been built with
# CMake (shared libraries), e.g. the one in the llama-cpp-python sdist:
#   tools/ggml-dump/build.sh /path/to/llama.cpp [/path/to/llama.cpp/build]
# Then dump every graph node of one prompt (and with DUMP_STEP2=1, only of
# the decode step after it) and compare strata op by op:
#   DUMP_DIR=/tmp/d tools/ggml-dump/ggml-dump -m MODEL -p "PROMPT" -t 2
#   cargo run --release -p strata-tests --example ggml_diff -- /tmp/d MODEL
set -euo pipefail
src=${1:?usage: build.sh LLAMA_CPP_SRC [BUILD_DIR]}
build=${2:-$src/build}
here=$(cd "$(dirname "$0")" && pwd)
g++ -O2 -std=c++17 "$here/dump.cpp" -I"$src/common" -I"$src/include" -I"$src/ggml/include" -I"$src/vendor" \
    -L"$build/bin" -lllama-common -lllama -lggml -lggml-base -Wl,-rpath,"$build/bin" -o "$here/ggml-dump"
echo "built $here/ggml-dump"
