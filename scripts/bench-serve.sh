#!/usr/bin/env bash
# Aggregate tok/s of a pipeline at 1 and 8 concurrent streams: one `strata
# worker` process per budget in BUDGETS (three by default) and `strata serve`
# on loopback, driven by the openai client (scripts/bench_serve.py).
#
#   scripts/bench-serve.sh MODEL.gguf [WORKER_THREADS] [-- bench_serve.py flags]
#
# Build first: cargo build --release. Each worker gets WORKER_THREADS CPU
# threads (default 1) and an equal share of the layers is not forced: the
# planner splits by the workers' (equal) offers, so all three are used only
# when --mem-budget makes them: BUDGETS="a,b,c" (default 190MiB,150MiB,140MiB,
# three stages for SmolLM2 at 512 tokens x 8 sequences).
# SERVE_FLAGS adds `strata serve` flags (e.g. "--micro-batches 1"),
# WORKER_FLAGS `strata worker` flags (e.g. "--gpu 0 --model-dir DIR"); BIN
# names the strata binary (default target/release/strata).
# LOCAL=1 runs the same stages in the serve process instead (`serve
# --devices cpu,cpu,...`, one entry per budget, the budgets' sum as
# --mem-budget split evenly and WORKER_THREADS x stages threads split evenly):
# hidden states pass in memory, not over loopback gRPC (docs/local-stages.md).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: scripts/bench-serve.sh MODEL.gguf [WORKER_THREADS] [-- flags]}
shift
threads=1
if [[ $# -gt 0 && $1 != -- ]]; then threads=$1; shift; fi
[[ ${1:-} == -- ]] && shift
bin=${BIN:-target/release/strata}
[[ -x $bin ]] || { echo "build first: cargo build --release" >&2; exit 1; }
IFS=, read -r -a budgets <<<"${BUDGETS:-190MiB,150MiB,140MiB}"
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
echo "bench-$RANDOM-$RANDOM" >"$dir/token"
# One TLS identity for the workers of this box, pinned by serve.
fp=$($bin worker --print-fingerprint --state-dir "$dir/state")
args=()
if [[ ${LOCAL:-} == 1 ]]; then
    total=0
    devices=""
    for b in "${budgets[@]}"; do
        total=$((total + ${b%MiB}))
        devices+="${devices:+,}cpu"
    done
    args+=(--devices "$devices" --mem-budget "${total}MiB" -t $((threads * ${#budgets[@]})))
    budgets=()
fi
for i in "${!budgets[@]}"; do
    port=$((17100 + i))
    STRATA_LOG=warn $bin worker --listen 127.0.0.1:$port --token-file "$dir/token" --state-dir "$dir/state" \
        --mem-budget "${budgets[$i]}" --cache-dir "$dir/slices$i" -t "$threads" ${WORKER_FLAGS:-} &
    args+=(--worker "127.0.0.1:$port#$fp")
done
# Wait until every worker listens (a GPU worker opens its device first).
for i in "${!budgets[@]}"; do
    for _ in $(seq 120); do
        (: </dev/tcp/127.0.0.1/$((17100 + i))) 2>/dev/null && break
        sleep 0.5
    done
done
STRATA_LOG=warn $bin serve -m "$model" "${args[@]}" --token-file "$dir/token" \
    --listen 127.0.0.1:18080 -c 512 -n 8 ${SERVE_FLAGS:-} 2>"$dir/serve.log" &
serve=$!
for _ in $(seq 600); do
    curl -sf 127.0.0.1:18080/health >/dev/null 2>&1 && break
    kill -0 $serve 2>/dev/null || break
    sleep 0.5
done
curl -sf 127.0.0.1:18080/health || { cat "$dir/serve.log"; exit 1; }
echo
python3 scripts/bench_serve.py http://127.0.0.1:18080 "$@"
