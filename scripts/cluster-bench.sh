#!/usr/bin/env bash
# Cross-node broadcast benchmark: starts Redis (one redis-server, or with --cluster a Redis
# Cluster of 3 primaries) and two `wsloop rooms` nodes on free loopback ports, runs
# examples/cluster_bench.rs (publishers on node A, subscribers on node B), then prints
# the CPU time each process used. Everything it starts it stops.
#   scripts/cluster-bench.sh [--cluster] [--mode topic|pattern] [--workers N] [--same-node] [-- cluster_bench options]
# --same-node puts the publishers on node B too: the baseline without the Redis hop.
# --cluster: 3 shards, no replicas (replication would add its own CPU); spread the load
# over them with `-- --rooms 12` (the script prints how many rooms each shard owns).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=topic
WORKERS=1
SAME=0
CLUSTER=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cluster) CLUSTER=1; shift ;;
    --mode) MODE=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --same-node) SAME=1; shift ;;
    --) shift; break ;;
    *) echo "usage: $0 [--cluster] [--mode topic|pattern] [--workers N] [--same-node] [-- bench options]" >&2; exit 2 ;;
  esac
done
cargo build -q --release --features cli --bin wsloop --example cluster_bench
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
DIR=$(mktemp -d)
PIDS=()
REDIS_PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
if [ "$CLUSTER" = 1 ]; then
  SEEDS=()
  ADDRS=()
  for n in 0 1 2; do
    R=$(free_port); BUS=$(free_port)
    mkdir -p "$DIR/r$n"
    redis-server --port "$R" --bind 127.0.0.1 --save '' --appendonly no --dir "$DIR/r$n" \
      --cluster-enabled yes --cluster-port "$BUS" --cluster-config-file nodes.conf >"$DIR/redis-$n.log" 2>&1 &
    PIDS+=($!); REDIS_PIDS+=($!)
    wait_port "$R"
    SEEDS+=("redis://127.0.0.1:$R"); ADDRS+=("127.0.0.1:$R")
  done
  redis-cli --cluster create "${ADDRS[@]}" --cluster-yes >"$DIR/create.log" 2>&1
  for _ in $(seq 200); do
    redis-cli -p "${ADDRS[0]#*:}" cluster info 2>/dev/null | grep -q cluster_state:ok && break; sleep 0.05
  done
  REDIS_FLAGS=(--redis-cluster "$(IFS=,; echo "${SEEDS[*]}")")
else
  R=$(free_port)
  redis-server --port "$R" --bind 127.0.0.1 --save '' --appendonly no --dir "$DIR" >"$DIR/redis.log" 2>&1 &
  PIDS+=($!); REDIS_PIDS+=($!)
  wait_port "$R"
  REDIS_FLAGS=(--redis "redis://127.0.0.1:$R/" --redis-mode "$MODE")
fi
A=$(free_port); B=$(free_port)
declare -A ADMIN
for port in "$A" "$B"; do
  ADMIN[$port]=$(free_port)
  RUST_LOG=warn ./target/release/wsloop rooms --listen "127.0.0.1:$port" --workers "$WORKERS" \
    --admin-listen "127.0.0.1:${ADMIN[$port]}" "${REDIS_FLAGS[@]}" >"$DIR/node-$port.log" 2>&1 &
  PIDS+=($!)
done
NODE_A=${PIDS[-2]}; NODE_B=${PIDS[-1]}
for port in "$A" "$B"; do wait_port "$port"; done
if [ "$CLUSTER" = 1 ]; then
  # Which shard owns each bench room's channel (rooms named bench-0, bench-1, ...).
  ROOMS=1; ROOM=bench; prev=""
  for a in "$@"; do
    [ "$prev" = --rooms ] && ROOMS=$a
    [ "$prev" = --room ] && ROOM=$a
    prev=$a
  done
  declare -A OWN
  for i in $(seq 0 $((ROOMS - 1))); do
    name="wsloop:$ROOM-$i"; [ "$ROOMS" = 1 ] && name="wsloop:$ROOM"
    for addr in "${ADDRS[@]}"; do
      # The owner answers with the number of receivers; the others with MOVED.
      if redis-cli -p "${addr#*:}" spublish "$name" probe 2>/dev/null | grep -q '^[0-9]'; then
        OWN[$addr]=$(( ${OWN[$addr]:-0} + 1 )); break
      fi
    done
  done
  for addr in "${ADDRS[@]}"; do echo "shard $addr: ${OWN[$addr]:-0} of $ROOMS room(s)"; done
fi
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
declare -A BEFORE
for p in "${REDIS_PIDS[@]}" "$NODE_A" "$NODE_B"; do BEFORE[$p]=$(cpu "$p"); done
START=$(date +%s.%N)
PUB=$A
[ "$SAME" = 1 ] && PUB=$B
./target/release/examples/cluster_bench --pub "127.0.0.1:$PUB" --sub "127.0.0.1:$B" "$@"
END=$(date +%s.%N)
if [ "$CLUSTER" = 1 ]; then WHAT="Redis Cluster of 3 shards"; else WHAT="one Redis, mode $MODE"; fi
echo "$WHAT, $WORKERS worker(s) per node; CPU over the run ($(awk "BEGIN{printf \"%.1f\", $END - $START}") s):"
n=0
for pid in "${REDIS_PIDS[@]}"; do
  used=$(( $(cpu "$pid") - BEFORE[$pid] ))
  printf '  %-24s %6.2f s\n' "redis-server $n" "$(awk "BEGIN{print $used / $TICK}")"
  n=$((n + 1))
done
for p in "$NODE_A:node A (publishers)" "$NODE_B:node B (subscribers)"; do
  pid=${p%%:*}; name=${p#*:}
  used=$(( $(cpu "$pid") - BEFORE[$pid] ))
  printf '  %-24s %6.2f s\n' "$name" "$(awk "BEGIN{print $used / $TICK}")"
done
# Where messages went missing, if any did: the bridges' loss counters.
for port in "$A" "$B"; do
  lost=$(exec 3<>"/dev/tcp/127.0.0.1/${ADMIN[$port]}"; printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3; cat <&3 |
    grep -E '^wsloop_redis_(lost_total|messages_lost_total|messages_late_total|refused_total)' | grep -v ' 0$' | tr '\n' ' ')
  [ -z "$lost" ] || echo "  node on $port: $lost"
done
