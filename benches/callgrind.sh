#!/usr/bin/env bash
# User-space instructions per echoed message, from callgrind: two runs of different
# length against `wsloop echo --workers 1`; (I2 - I1) / (M2 - M1) cancels start-up and
# shutdown. Instruction counts do not depend on the machine's noise.
#   benches/callgrind.sh [SIZE] [CONNS]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-32}
CONNS=${2:-100}
cargo build --release --features bench --bin wsloop --bin wsloop-bench >/dev/null 2>&1
OUT=$(mktemp -d)
run() { # $1 = seconds of load; prints "instructions messages"
  local port=$((20000 + RANDOM % 20000)) admin=$((40000 + RANDOM % 20000))
  valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.$1" \
    ./target/release/wsloop echo --listen 127.0.0.1:$port --workers 1 --admin-listen 127.0.0.1:$admin \
    >"$OUT/server.$1.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.2; done
  ./target/release/wsloop-bench echo --url ws://127.0.0.1:$port/ --conns "$CONNS" --size "$SIZE" \
    --inflight 1 --duration "$1" --warmup 0 -q >/dev/null 2>&1 || true
  local msgs
  msgs=$(exec 3<>/dev/tcp/127.0.0.1/$admin; printf 'GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n' >&3; cat <&3 |
    awk '/^wsloop_messages_received_total /{print $2}')
  kill -INT $pid; wait $pid 2>/dev/null || true
  local ir
  ir=$(callgrind_annotate "$OUT/cg.$1" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}')
  echo "$ir $msgs"
}
read -r I1 M1 < <(run 5)
read -r I2 M2 < <(run 15)
echo "run1: $I1 instructions, $M1 messages"
echo "run2: $I2 instructions, $M2 messages"
awk -v i1="$I1" -v i2="$I2" -v m1="$M1" -v m2="$M2" \
  'BEGIN { printf "instructions per echoed message (%s B, %s conns): %.0f\n", '"$SIZE"', '"$CONNS"', (i2-i1)/(m2-m1) }'
rm -rf "$OUT"
