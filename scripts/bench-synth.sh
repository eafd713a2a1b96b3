#!/usr/bin/env bash
# CPU speed of strata next to llama.cpp on `strata synth` models, in one run:
# for each ARCH:PRESET:QUANT, synthesize the model, then `strata bench` and
# `llama-bench` on it with the same threads, prompt and generation lengths,
# interleaved (strata, llama.cpp, strata, llama.cpp) so that a noisy machine
# moves both alike. Prints a table with strata / llama.cpp per test.
#
#   scripts/bench-synth.sh qwen35:tiny:Q8_0 qwen35moe:tiny:Q8_0 gemma4:tiny:Q8_0
#
# Env: STRATA (default target/release/strata), LLAMA_BENCH (default
# ~/.cache/strata/llama-build/bin/llama-bench), THREADS (2), PP (512),
# TG (128), REPS (3), ROUNDS (2). On x86-64, llama-bench runs with
# scripts/no-amx.c preloaded (as the references were recorded).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
strata=${STRATA:-$repo/target/release/strata}
llama_bench=${LLAMA_BENCH:-$HOME/.cache/strata/llama-build/bin/llama-bench}
threads=${THREADS:-2} pp=${PP:-512} tg=${TG:-128} reps=${REPS:-3} rounds=${ROUNDS:-2}
[ $# -gt 0 ] || { echo "usage: $0 ARCH:PRESET:QUANT..." >&2; exit 2; }
[ -x "$strata" ] || { echo "no $strata: cargo build --release -p strata" >&2; exit 1; }
[ -x "$llama_bench" ] || { echo "no $llama_bench: cmake --build ~/.cache/strata/llama-build --target llama-bench" >&2; exit 1; }
preload=
if [ "$(uname -m)" = x86_64 ]; then
  preload=/tmp/no-amx.so
  [ -f "$preload" ] || gcc -shared -fPIC -O2 -o "$preload" "$here/no-amx.c"
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "strata $(git -C "$repo" rev-parse --short HEAD), $("$llama_bench" --version 2>&1 | grep -m1 version || true)"
echo "$(lscpu | grep -m1 'Model name' | sed 's/  */ /g'), load $(cut -d' ' -f1-3 /proc/loadavg), $threads threads"
echo
echo "| model | test | strata t/s | llama.cpp t/s | strata / llama.cpp |"
echo "| --- | --- | ---: | ---: | ---: |"
for spec in "$@"; do
  IFS=: read -r arch preset quant <<<"$spec"
  model="$work/$arch-$preset-$quant.gguf"
  "$strata" synth --arch "$arch" --preset "$preset" --quant "$quant" -o "$model" >/dev/null
  for round in $(seq "$rounds"); do
    # strata bench prints llama-bench's markdown table: pp then tg rows.
    s=$("$strata" bench -m "$model" -t "$threads" -p "$pp" -n "$tg" -r "$reps" --cpu 2>/dev/null |
        awk -F'|' '/ pp| tg/ {gsub(/ /, "", $(NF-1)); print $(NF-1)}')
    l=$(LD_PRELOAD=$preload "$llama_bench" -m "$model" -t "$threads" -p "$pp" -n "$tg" -r "$reps" -o csv 2>/dev/null |
        python3 -c "import csv, sys
for r in csv.DictReader(sys.stdin): print('%.2f±%.2f' % (float(r['avg_ts']), float(r['stddev_ts'])))")
    paste <(echo "$s") <(echo "$l") | while read -r st lt; do
      test=$([ -z "${first_done:-}" ] && echo "pp$pp" || echo "tg$tg"); first_done=1
      ratio=$(python3 -c "print(f'{float(\"$st\".split(\"±\")[0]) / float(\"$lt\".split(\"±\")[0]):.2f}')")
      echo "| $arch $preset $quant (round $round) | $test | $st | $lt | $ratio |"
    done
  done
done
