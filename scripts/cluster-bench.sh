#!/usr/bin/env bash
# Cross-node broadcast benchmark: starts Redis (one redis-server, or with --cluster a Redis
# Cluster of 3 primaries) and two `wsloop rooms` nodes on free loopback ports, runs
# examples/cluster_bench.rs (publishers on node A, subscribers on node B), then prints
# the CPU time each process used. Everything it starts it stops.
#   scripts/cluster-bench.sh [--cluster] [--mode topic|pattern] [--workers N] [--same-node]
#       [--redis-cpu PCT] [-- cluster_bench options]
# --same-node puts the publishers on node B too: the baseline without the Redis hop.
# --cluster: 3 shards, no replicas (replication would add its own CPU); spread the load
# over them with `-- --rooms 12` (the script prints how many rooms each shard owns).
# --redis-cpu PCT caps every redis-server at PCT percent of one core, as a small managed
# Redis instance would be: each one runs in a cgroup of its own (cgroup v1 cpu controller
# at /sys/fs/cgroup/cpu, cfs_period_us 100000, cfs_quota_us PCT*1000; needs root), made
# here and removed at exit. Without a cap, on a small machine the wsloop nodes and the
# load generator run out of CPU long before one Redis does.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=topic
WORKERS=1
SAME=0
CLUSTER=0
REDIS_CPU=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cluster) CLUSTER=1; shift ;;
    --mode) MODE=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --same-node) SAME=1; shift ;;
    --redis-cpu) REDIS_CPU=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "usage: $0 [--cluster] [--mode topic|pattern] [--workers N] [--same-node] [--redis-cpu PCT] [-- bench options]" >&2; exit 2 ;;
  esac
done
die() { echo "cluster-bench: $*" >&2; exit 1; }
CG_ROOT=/sys/fs/cgroup/cpu
PERIOD=100000
if [ -n "$REDIS_CPU" ]; then
  # PCT of one core per 100 ms period; the kernel's smallest quota is 1 ms (1%).
  QUOTA=$(awk -v p="$REDIS_CPU" 'BEGIN { if (p !~ /^[0-9]+(\.[0-9]+)?$/) exit 1; printf "%d", p * 1000 }') ||
    die "--redis-cpu: a percentage of one core, such as 5 or 7.5, not '$REDIS_CPU'"
  [ "$QUOTA" -ge 1000 ] || die "--redis-cpu: at least 1 (the kernel's smallest quota is 1 ms per 100 ms)"
  [ -w "$CG_ROOT/cgroup.procs" ] && [ -e "$CG_ROOT/cpu.cfs_quota_us" ] ||
    die "--redis-cpu needs the cgroup v1 cpu controller at $CG_ROOT, writable (run as root)"
fi
cargo build -q --release --features cli --bin wsloop --example cluster_bench
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
DIR=$(mktemp -d)
PIDS=()
REDIS_PIDS=()
CGROUPS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for cg in "${CGROUPS[@]}"; do
    # A cgroup goes once its last task has been reaped, which can lag the wait a little.
    for _ in $(seq 50); do rmdir "$cg" 2>/dev/null && break; sleep 0.1; done
    [ -d "$cg" ] && echo "cluster-bench: could not remove cgroup $cg" >&2
  done
  rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# start_redis NAME PORT ARGS...: redis-server in the background, in a cgroup of its own
# capped at --redis-cpu when given (joined before exec, so every thread it starts is in it).
start_redis() {
  local name=$1 port=$2 cg=""; shift 2
  if [ -n "$REDIS_CPU" ]; then
    cg="$CG_ROOT/wsloop-cluster-bench-$$-$name"
    mkdir "$cg" || die "cannot make cgroup $cg"
    CGROUPS+=("$cg")
    echo "$PERIOD" >"$cg/cpu.cfs_period_us" && echo "$QUOTA" >"$cg/cpu.cfs_quota_us" ||
      die "cannot set the cpu quota of cgroup $cg"
  fi
  (
    if [ -n "$cg" ]; then echo "$BASHPID" >"$cg/cgroup.procs" || exit 1; fi
    exec redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no "$@"
  ) >"$DIR/$name.log" 2>&1 &
  PIDS+=($!); REDIS_PIDS+=($!); REDIS_CG[$!]=$cg
  wait_port "$port" || die "$name did not listen on $port: $(tail -3 "$DIR/$name.log")"
  if [ -n "$cg" ]; then grep -qx "$!" "$cg/cgroup.procs" || die "$name is not in cgroup $cg"; fi
}
declare -A REDIS_CG
if [ "$CLUSTER" = 1 ]; then
  SEEDS=()
  ADDRS=()
  for n in 0 1 2; do
    R=$(free_port); BUS=$(free_port)
    mkdir -p "$DIR/r$n"
    start_redis "redis-$n" "$R" --dir "$DIR/r$n" \
      --cluster-enabled yes --cluster-port "$BUS" --cluster-config-file nodes.conf
    SEEDS+=("redis://127.0.0.1:$R"); ADDRS+=("127.0.0.1:$R")
  done
  redis-cli --cluster create "${ADDRS[@]}" --cluster-yes >"$DIR/create.log" 2>&1
  for _ in $(seq 200); do
    redis-cli -p "${ADDRS[0]#*:}" cluster info 2>/dev/null | grep -q cluster_state:ok && break; sleep 0.05
  done
  REDIS_FLAGS=(--redis-cluster "$(IFS=,; echo "${SEEDS[*]}")")
else
  R=$(free_port)
  start_redis redis "$R" --dir "$DIR"
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
# cgroup v1 cpu.stat: nr_periods, nr_throttled, throttled_time (ns).
throttle() { awk '{printf "%s ", $2}' "${REDIS_CG[$1]}/cpu.stat"; }
declare -A BEFORE THR_BEFORE
for p in "${REDIS_PIDS[@]}" "$NODE_A" "$NODE_B"; do BEFORE[$p]=$(cpu "$p"); done
for p in "${REDIS_PIDS[@]}"; do [ -z "${REDIS_CG[$p]}" ] || THR_BEFORE[$p]=$(throttle "$p"); done
START=$(date +%s.%N)
PUB=$A
[ "$SAME" = 1 ] && PUB=$B
./target/release/examples/cluster_bench --pub "127.0.0.1:$PUB" --sub "127.0.0.1:$B" "$@"
END=$(date +%s.%N)
if [ "$CLUSTER" = 1 ]; then WHAT="Redis Cluster of 3 shards"; else WHAT="one Redis, mode $MODE"; fi
[ -z "$REDIS_CPU" ] || WHAT="$WHAT, each redis-server capped at $REDIS_CPU% of a core"
SECS=$(awk "BEGIN{printf \"%.1f\", $END - $START}")
echo "$WHAT, $WORKERS worker(s) per node; CPU over the run ($SECS s):"
n=0
for pid in "${REDIS_PIDS[@]}"; do
  used=$(( $(cpu "$pid") - BEFORE[$pid] ))
  extra=""
  if [ -n "${REDIS_CG[$pid]}" ]; then
    extra=$(awk -v b="${THR_BEFORE[$pid]}" -v a="$(throttle "$pid")" -v cap="$REDIS_CPU" -v secs="$SECS" 'BEGIN {
      split(b, x, " "); split(a, y, " ")
      printf "(cap %.2f s); throttled in %d of %d periods, %.2f s", cap / 100 * secs,
        y[2] - x[2], y[1] - x[1], (y[3] - x[3]) / 1e9 }')
  fi
  printf '  %-24s %6.2f s %s\n' "redis-server $n" "$(awk "BEGIN{print $used / $TICK}")" "$extra"
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
    grep -E '^wsloop_redis_(lost_total|messages_lost_total|messages_late_total|refused_total)' | grep -v ' 0$' | tr '\n' ' ' || true)
  [ -z "$lost" ] || echo "  node on $port: $lost"
done
