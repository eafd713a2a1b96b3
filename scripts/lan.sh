#!/usr/bin/env bash
# A LAN on one machine: N network namespaces (one per worker) on a bridge,
# each link shaped by tbf, each worker behind a delay relay of ours (this
# kernel has no netem). Root only; `down` removes everything `up` made.
#
#   scripts/lan.sh up N [RATE] [DELAY_US]   namespaces stlan0..N-1 at 10.77.0.1..N,
#                                           the root namespace at 10.77.0.254;
#                                           RATE per link (default 1gbit),
#                                           DELAY_US one way (default 150)
#   scripts/lan.sh relay I PORT             in namespace I: 10.77.0.(I+1):PORT
#                                           -> 127.0.0.1:PORT, delayed
#   scripts/lan.sh exec I CMD...            run CMD in namespace I
#   scripts/lan.sh check                    what the relay adds by itself
#   scripts/lan.sh down
#
# Traffic between two namespaces crosses two shaped links (out of one, into
# the other), as through a switch. The relay delays each direction of every
# connection to a worker, and every UDP datagram to it (QUIC), so any hop
# (coordinator -> worker, worker -> worker) sees DELAY_US one way. Needs target/release/delay-relay
# (cargo build --release -p strata --bin delay-relay).
set -euo pipefail
cd "$(dirname "$0")/.."
state=/run/stlan
relay_bin=${RELAY_BIN:-$PWD/target/release/delay-relay}

addr() { echo "10.77.0.$(($1 + 1))"; }

up() {
    local n=${1:?usage: lan.sh up N [RATE] [DELAY_US]} rate=${2:-1gbit} delay=${3:-150}
    [[ -x $relay_bin ]] || { echo "build first: cargo build --release -p strata --bin delay-relay" >&2; exit 1; }
    [[ -e $state ]] && { echo "a LAN is up already: scripts/lan.sh down" >&2; exit 1; }
    mkdir -p "$state"
    echo "$n" >"$state/n"
    echo "$delay" >"$state/delay"
    ip link add stlan-br type bridge
    ip addr add 10.77.0.254/24 dev stlan-br
    ip link set stlan-br up
    for i in $(seq 0 $((n - 1))); do
        ip netns add "stlan$i"
        ip link add "stlan-v$i" type veth peer name eth0 netns "stlan$i"
        ip link set "stlan-v$i" master stlan-br up
        ip -n "stlan$i" addr add "$(addr "$i")/24" dev eth0
        ip -n "stlan$i" link set eth0 up
        ip -n "stlan$i" link set lo up
        # A burst of a few packets: a 32 KiB hidden state pays its wire
        # time instead of passing in one burst.
        tc qdisc add dev "stlan-v$i" root tbf rate "$rate" burst 16kb limit 4mb
        tc -n "stlan$i" qdisc add dev eth0 root tbf rate "$rate" burst 16kb limit 4mb
    done
    echo "LAN up: $n namespaces stlan0..$((n - 1)) at 10.77.0.1..$n, $rate per link, ${delay} us one way through relays"
}

relay() {
    local i=${1:?usage: lan.sh relay I PORT} port=${2:?usage: lan.sh relay I PORT}
    ip netns exec "stlan$i" "$relay_bin" relay "$(addr "$i"):$port" "127.0.0.1:$port" \
        "$(cat "$state/delay")" 2>>"$state/relay.log" &
    echo $! >>"$state/pids"
    for _ in $(seq 50); do
        ip netns exec "stlan$i" bash -c ": </dev/tcp/$(addr "$i")/$port" 2>/dev/null && return
        sleep 0.1
    done
    echo "relay in stlan$i on port $port did not come up" >&2
    exit 1
}

check() {
    local port=19500
    ip netns exec stlan0 "$relay_bin" echo "127.0.0.1:$port" &
    local echo_pid=$!
    ip netns exec stlan0 "$relay_bin" echo "$(addr 0):$((port + 1))" &
    local echo2_pid=$!
    sleep 0.3
    relay 0 "$port"
    echo "round trips root -> stlan0 (64 B):"
    echo -n "  no relay (shaped links only):  "
    "$relay_bin" ping "$(addr 0):$((port + 1))" 2000 64
    echo -n "  through the relay, $(cat "$state/delay") us each way: "
    "$relay_bin" ping "$(addr 0):$port" 2000 64
    echo -n "  same, 32 KiB each way:          "
    "$relay_bin" ping "$(addr 0):$port" 300 32768
    kill "$echo_pid" "$echo2_pid"
}

down() {
    if [[ -f $state/pids ]]; then
        xargs -r kill <"$state/pids" 2>/dev/null || true
    fi
    for ns in $(ip netns list | awk '/^stlan[0-9]+/ {print $1}'); do
        ip netns pids "$ns" | xargs -r kill 2>/dev/null || true
        ip netns del "$ns"
    done
    ip link del stlan-br 2>/dev/null || true
    rm -rf "$state"
}

cmd=${1:-}
shift || true
case $cmd in
    up) up "$@" ;;
    relay) relay "$@" ;;
    exec) i=${1:?usage: lan.sh exec I CMD...}; shift; exec ip netns exec "stlan$i" "$@" ;;
    check) check ;;
    down) down ;;
    *) sed -n '2,20p' "$0" >&2; exit 1 ;;
esac
