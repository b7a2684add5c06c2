#!/usr/bin/env bash
# The broadcast batching policy against writing every turn (and, with BASE_BIN, an older
# build such as release cfb9206's fixed 2 ms window), in alternating runs:
#   scripts/batching-bench.sh            # RUNS=3 SUBS_LIST="200 1000" CFGS="a b"
#   BASE_BIN=/path/to/old/target/release CFGS="a b c" scripts/batching-bench.sh
# a = the default policy, b = --broadcast-coalesce 0, c = $BASE_BIN/wsloop (defaults).
# Server on CPU 0, wsloop-bench on CPU 1; every server stops by its PID. Needs a release
# build with `--features cli,bench`.
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$REPO/target/release}
RUNS=${RUNS:-3}; SUBS_LIST=${SUBS_LIST:-"200 1000"}; SIZE=${SIZE:-64}; RATE=${RATE:-1000}
CFGS=${CFGS:-"a b"}; OUT=${OUT:-$REPO/target/batching-bench}; mkdir -p "$OUT"
PORT=${PORT:-23000}
for subs in $SUBS_LIST; do for r in $(seq 1 "$RUNS"); do
  # Alternate the order from run to run: the host drifts within a sitting.
  order=$CFGS; [ $((r % 2)) = 0 ] && order=$(echo "$CFGS" | tr " " "\n" | tac | tr "\n" " ")
  for c in $order; do
    PORT=$((PORT+1))
    SBIN=$BIN; extra=""
    case $c in
      a) ;;
      b) extra="--broadcast-coalesce 0" ;;
      c) SBIN=${BASE_BIN:?set BASE_BIN for c} ;;
      *) echo "unknown config $c" >&2; exit 2 ;;
    esac
    # shellcheck disable=SC2086
    taskset -c 0 "$SBIN/wsloop" rooms --workers 1 --listen 127.0.0.1:$PORT $extra >"$OUT/srv-$c-$subs-$r.log" 2>&1 &
    spid=$!; sleep 0.4
    timeout 60 taskset -c 1 "$BIN/wsloop-bench" broadcast --url ws://127.0.0.1:$PORT/r --subs "$subs" --size "$SIZE" \
      --rate "$RATE" --duration 5 --warmup 1 --server-pid $spid -q > "$OUT/b-$c-$subs-$r.txt" 2>&1
    kill $spid; wait $spid 2>/dev/null
    echo "subs=$subs run=$r cfg=$c $(grep RESULT "$OUT/b-$c-$subs-$r.txt" | grep -oE '(delivery_ratio|p50_us|p99_us|server_cpu_pct|server_cpu_us_per_msg)=[0-9.]+' | tr '\n' ' ')"
  done
done; done
