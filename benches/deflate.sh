#!/usr/bin/env bash
# permessage-deflate benchmarks for the README: the server on CPU 0, wsloop-bench on CPU 1,
# every configuration RUNS times (default 3), interleaved, each run's RESULT line printed
# with its label; the README reports medians.
#   benches/deflate.sh [echo|broadcast|idle ...]   (default: all three)
# Peers from ../shared/peers (build-all.sh): gorilla-echo -compress, ws-node-echo --deflate.
# BCAST_SUBS and BCAST_RATE (default 1000 and 1000) scale the broadcast point.
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS=${PEERS_DIR:-$HOME/.cache/wsloop-peers}
RUNS=${RUNS:-3}
BENCH=./target/release/wsloop-bench
WSLOOP=./target/release/wsloop
cargo build --release --features bench --bin wsloop --bin wsloop-bench >/dev/null 2>&1
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# run LABEL BENCH-ARGS -- SERVER-CMD (PORT in the server command is replaced)
run() {
  local label=$1; shift
  local args=()
  while [[ $1 != -- ]]; do args+=("$1"); shift; done
  shift
  local port; port=$(free_port)
  local cmd=("${@//PORT/$port}")
  taskset -c 0 "${cmd[@]}" >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
  local path=/
  [[ ${cmd[1]:-} == rooms ]] && path=/bench
  local out
  # A run with errors exits 1: its RESULT line (errors=N) is kept all the same.
  out=$(taskset -c 1 "$BENCH" "${args[@]}" --url "ws://127.0.0.1:$port$path" --server-pid "$pid" --quiet 2>&1 |
    grep '^RESULT' || true)
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  echo "$label $out load=$(cut -d' ' -f1 /proc/loadavg)"
}

echo_bench() {
  local e=(echo --conns 100 --size 1024 --deflate --duration 10 --warmup 2)
  for i in $(seq "$RUNS"); do
    run wsloop-shared "${e[@]}" -- "$WSLOOP" echo --listen 127.0.0.1:PORT --workers 1 --compression shared
    run wsloop-dedicated "${e[@]}" -- "$WSLOOP" echo --listen 127.0.0.1:PORT --workers 1 --compression dedicated
    run gorilla-compress "${e[@]}" -- env GOMAXPROCS=1 "$PEERS/gorilla-echo" -addr 127.0.0.1:PORT -compress
    run node-ws-deflate "${e[@]}" -- "$PEERS/ws-node-echo" PORT --deflate
  done
}

broadcast_bench() {
  local b=(broadcast --subs "${BCAST_SUBS:-1000}" --rate "${BCAST_RATE:-1000}" --size 512 --duration 10 --warmup 2)
  for i in $(seq "$RUNS"); do
    run bcast-deflate "${b[@]}" --deflate -- "$WSLOOP" rooms --listen 127.0.0.1:PORT --workers 1 --compression shared
    run bcast-plain "${b[@]}" --json -- "$WSLOOP" rooms --listen 127.0.0.1:PORT --workers 1 --compression shared
  done
}

idle_bench() {
  local d=(idle --conns 19500 --hold 5)
  for i in $(seq "$RUNS"); do
    run idle-deflate "${d[@]}" --deflate -- "$WSLOOP" echo --listen 127.0.0.1:PORT --workers 1 --compression shared --max-conns 20000 --max-conns-per-ip 20000
    run idle-plain "${d[@]}" -- "$WSLOOP" echo --listen 127.0.0.1:PORT --workers 1 --compression shared --max-conns 20000 --max-conns-per-ip 20000
  done
}

echo "load before: $(cat /proc/loadavg)"
for what in "${@:-echo broadcast idle}"; do
  for w in $what; do "${w}_bench"; done
done
echo "load after: $(cat /proc/loadavg)"
