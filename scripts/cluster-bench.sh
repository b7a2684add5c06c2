#!/usr/bin/env bash
# Cross-node broadcast benchmark: starts redis-server and two `wsloop rooms --redis` nodes
# on free loopback ports, runs examples/cluster_bench.rs (publisher on node A, subscribers
# on node B), then prints the CPU time each process used. Everything it starts it stops.
#   scripts/cluster-bench.sh [--mode topic|pattern] [--workers N] [--same-node] [-- cluster_bench options]
# --same-node puts the publisher on node B too: the baseline without the Redis hop.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=topic
WORKERS=1
SAME=0
while [ $# -gt 0 ]; do
  case "$1" in
    --mode) MODE=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --same-node) SAME=1; shift ;;
    --) shift; break ;;
    *) echo "usage: $0 [--mode topic|pattern] [--workers N] [--same-node] [-- bench options]" >&2; exit 2 ;;
  esac
done
cargo build -q --release --features cli --bin wsloop --example cluster_bench
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
R=$(free_port); A=$(free_port); B=$(free_port)
DIR=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
redis-server --port "$R" --bind 127.0.0.1 --save '' --appendonly no --dir "$DIR" >"$DIR/redis.log" 2>&1 &
PIDS+=($!); REDIS=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$R") 2>/dev/null && break; sleep 0.05; done
for port in "$A" "$B"; do
  RUST_LOG=warn ./target/release/wsloop rooms --listen "127.0.0.1:$port" --workers "$WORKERS" \
    --redis "redis://127.0.0.1:$R/" --redis-mode "$MODE" >"$DIR/node-$port.log" 2>&1 &
  PIDS+=($!)
done
NODE_A=${PIDS[1]}; NODE_B=${PIDS[2]}
for port in "$A" "$B"; do
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
done
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
declare -A BEFORE
for p in "$REDIS" "$NODE_A" "$NODE_B"; do BEFORE[$p]=$(cpu "$p"); done
START=$(date +%s.%N)
PUB=$A
[ "$SAME" = 1 ] && PUB=$B
./target/release/examples/cluster_bench --pub "127.0.0.1:$PUB" --sub "127.0.0.1:$B" "$@"
END=$(date +%s.%N)
echo "mode $MODE, $WORKERS worker(s) per node; CPU over the run ($(awk "BEGIN{printf \"%.1f\", $END - $START}") s):"
for p in "$REDIS:redis-server" "$NODE_A:node A (publisher)" "$NODE_B:node B (subscribers)"; do
  pid=${p%%:*}; name=${p#*:}
  used=$(( $(cpu "$pid") - BEFORE[$pid] ))
  printf '  %-24s %6.2f s\n' "$name" "$(awk "BEGIN{print $used / $TICK}")"
done
