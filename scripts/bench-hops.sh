#!/usr/bin/env bash
# What stage boundaries cost: decode tok/s at 1 and 8 streams for one stage
# against three, for strata and for llama.cpp's RPC mode, in one run, with
# the same client (scripts/bench_serve.py, ignore_eos, 128 tokens).
#
#   scripts/bench-hops.sh MODEL.gguf [loopback|lan] [-- bench_serve.py flags]
#
# loopback: three `strata worker` / `ggml-rpc-server` processes on 127.0.0.1.
# lan: each in its own namespace of scripts/lan.sh (RATE, default 1gbit;
#      DELAY_US one way, default 150), behind the delay relay; root only.
# Every process gets one CPU thread. strata's three stages come from
# --mem-budget (BUDGETS, default 190MiB,150MiB,140MiB: three stages of
# SmolLM2 at 512 tokens x 8 sequences); llama.cpp splits evenly over its
# three RPC servers (--tensor-split 1,1,1).
# LLAMA_BIN: a llama.cpp build's bin/ with GGML_RPC=ON (default
# ~/.cache/strata/llama-build/bin); STRATA_ONLY=1 skips llama.cpp. BIN:
# strata (default target/release/strata). The three-stage `strata serve`
# runs once per data-plane transport in TRANSPORTS (default "grpc quic tcp";
# the relay carries UDP too), on the same workers; SERVE_FLAGS: more flags for it.
# Each is then also paired with the one-stage serve: PAIRED (default 6)
# rounds of one stream on each in turn, and the median of their ratios
# (0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: scripts/bench-hops.sh MODEL.gguf [loopback|lan] [-- flags]}
shift
net=loopback
if [[ $# -gt 0 && $1 != -- ]]; then net=$1; shift; fi
[[ ${1:-} == -- ]] && shift
bin=${BIN:-$PWD/target/release/strata}
llama=${LLAMA_BIN:-$HOME/.cache/strata/llama-build/bin}
needed=("$bin")
[[ ${STRATA_ONLY:-0} == 1 ]] || needed+=("$llama/llama-server" "$llama/ggml-rpc-server")
for b in "${needed[@]}"; do
    [[ -x $b ]] || { echo "missing $b (cargo build --release; llama.cpp with -DGGML_RPC=ON)" >&2; exit 1; }
done
IFS=, read -r -a budgets <<<"${BUDGETS:-190MiB,150MiB,140MiB}"
dir=$(mktemp -d)
cleanup() {
    kill $(jobs -p) 2>/dev/null || true
    wait 2>/dev/null || true
    [[ $net == lan ]] && scripts/lan.sh down
    rm -rf "$dir"
}
trap cleanup EXIT
if [[ $net == lan ]]; then
    scripts/lan.sh up 3 "${RATE:-1gbit}" "${DELAY_US:-150}"
fi

# Where stage i listens (PORT inside its namespace) and is reached from here.
reach() { [[ $net == lan ]] && echo "10.77.0.$(($1 + 1)):$2" || echo "127.0.0.1:$2"; }
in_stage() {
    local i=$1
    shift
    # exec: run with &, the job is the process itself, and stop_all's kill reaches it.
    if [[ $net == lan ]]; then scripts/lan.sh exec "$i" "$@"; else exec "$@"; fi
}
wait_port() {
    for _ in $(seq 600); do
        (: </dev/tcp/${1%:*}/${1#*:}) 2>/dev/null && return
        sleep 0.2
    done
    echo "nothing listens on $1" >&2
    exit 1
}
wait_http() {
    for _ in $(seq 600); do
        curl -sf "$1/health" >/dev/null 2>&1 && return
        sleep 0.5
    done
    echo "$1 never became healthy" >&2
    exit 1
}
bench() {
    local name=$1 url=$2
    shift 2
    echo "== $name"
    python3 scripts/bench_serve.py "$url" "$@" 2>&1 | sed 's/^/   /'
}
# With lan: once stage i listens on PORT in its namespace, a relay makes
# it reachable at 10.77.0.(i+1):PORT.
expose() {
    [[ $net == lan ]] || return 0
    for _ in $(seq 600); do
        scripts/lan.sh exec "$1" bash -c ": </dev/tcp/127.0.0.1/$2" 2>/dev/null && break
        sleep 0.2
    done
    scripts/lan.sh relay "$1" "$2"
}
stop_all() {
    kill $(jobs -p) 2>/dev/null || true
    wait 2>/dev/null || true
    if [[ $net == lan && -f /run/stlan/pids ]]; then xargs -r kill </run/stlan/pids 2>/dev/null || true; : >/run/stlan/pids; fi
    sleep 0.5
}
flags=("$@")

# Some VMs grant AMX yet fault on its first tile instruction: llama.cpp
# runs with AMX refused, as the references are recorded (scripts/no-amx.c).
cc -shared -fPIC -O2 -o "$dir/no-amx.so" scripts/no-amx.c -ldl
export LD_PRELOAD_LLAMA=$dir/no-amx.so

echo "bench-$RANDOM-$RANDOM" >"$dir/token"
fp=$($bin worker --print-fingerprint --state-dir "$dir/state")

# strata, one stage (embedded worker, one thread). It stays up, idle, for
# the paired runs against each three-stage serve.
STRATA_LOG=warn $bin serve -m "$model" --listen 127.0.0.1:18079 -c 512 -n 8 -t 1 2>"$dir/serve1.log" &
wait_http http://127.0.0.1:18079
bench "strata, 1 stage" http://127.0.0.1:18079 "${flags[@]}"

# strata, three workers.
args=()
for i in 0 1 2; do
    port=$((17100 + i))
    STRATA_LOG=warn in_stage "$i" "$bin" worker --listen "127.0.0.1:$port" --token-file "$dir/token" \
        --state-dir "$dir/state" --mem-budget "${budgets[$i]}" --cache-dir "$dir/slices$i" -t 1 \
        2>"$dir/worker$i.log" &
    expose "$i" "$port"
    args+=(--worker "$(reach "$i" "$port")#$fp")
done
for i in 0 1 2; do wait_port "$(reach "$i" $((17100 + i)))"; done
read -r -a serve_flags <<<"${SERVE_FLAGS:-}"
# The same three workers under each data-plane transport in turn.
for transport in ${TRANSPORTS:-grpc quic tcp}; do
    STRATA_LOG=info $bin serve -m "$model" "${args[@]}" --token-file "$dir/token" \
        --listen 127.0.0.1:18080 -c 512 -n 8 --transport "$transport" "${serve_flags[@]}" \
        2>"$dir/serve3-$transport.log" &
    serve=$!
    wait_http http://127.0.0.1:18080
    grep -E "link|layers|QUIC" "$dir/serve3-$transport.log" | sed 's/^/   /' || true
    bench "strata, 3 stages ($net, $transport${SERVE_FLAGS:+, $SERVE_FLAGS})" http://127.0.0.1:18080 "${flags[@]}"
    if [[ ${PAIRED:-6} -gt 0 ]]; then
        echo "== strata, 3 stages ($net, $transport) against 1 stage, paired"
        python3 scripts/bench_serve.py http://127.0.0.1:18080 --against http://127.0.0.1:18079 \
            --rounds "${PAIRED:-6}" 2>&1 | sed 's/^/   /' || echo "   the paired run failed"
    fi
    curl -s http://127.0.0.1:18080/v1/pool | python3 -c 'import json, sys
for s in json.load(sys.stdin)["models"][0]["stages"]:
    print("   stage", s.get("addr"), "frames on QUIC:", s.get("frames_sent_quic"), "on TCP links:", s.get("frames_sent_tcp"))' || true
    kill "$serve"
    wait "$serve" 2>/dev/null || true
done
stop_all
[[ ${STRATA_ONLY:-0} == 1 ]] && exit 0

# llama.cpp, one process.
LD_PRELOAD=$LD_PRELOAD_LLAMA "$llama/llama-server" -m "$model" --port 18081 -c 4096 -np 8 -t 1 >"$dir/llama1.log" 2>&1 &
wait_http http://127.0.0.1:18081
bench "llama.cpp, 1 process" http://127.0.0.1:18081 "${flags[@]}"
stop_all

# llama.cpp, three RPC servers.
rpc=()
for i in 0 1 2; do
    port=$((50052 + i))
    LD_PRELOAD=$LD_PRELOAD_LLAMA in_stage "$i" "$llama/ggml-rpc-server" -H 127.0.0.1 -p "$port" -t 1 >"$dir/rpc$i.log" 2>&1 &
    expose "$i" "$port"
    rpc+=("$(reach "$i" "$port")")
done
for r in "${rpc[@]}"; do wait_port "$r"; done
rpc_list=$(IFS=,; echo "${rpc[*]}")
LD_PRELOAD=$LD_PRELOAD_LLAMA "$llama/llama-server" -m "$model" --port 18081 -c 4096 -np 8 -t 1 --rpc "$rpc_list" \
    -ngl 99 --tensor-split 1,1,1 >"$dir/llama3.log" 2>&1 &
wait_http http://127.0.0.1:18081
bench "llama.cpp, 3 RPC servers ($net)" http://127.0.0.1:18081 "${flags[@]}"
stop_all
