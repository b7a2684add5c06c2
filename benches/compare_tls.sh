#!/usr/bin/env bash
# wss:// side by side: wsloop (--tls-cert) against tt-echo --tls (tokio-rustls),
# gorilla-echo -tls (Go crypto/tls) and ws-node-echo --tls (Node https + ws), and wsloop
# over ws:// beside its own wss:// for TLS's own cost. All in one run, server pinned to
# CPU 0 and wsloop-bench to CPU 1, every point RUNS times on a fresh server (medians in
# the table), the certificate ECDSA P-256 from ../shared/peers/make-test-cert.sh.
#
#   benches/compare_tls.sh        (after cargo build --release --features bench and
#                                  ../shared/peers/build-all.sh)
#
# Points: echo 100 connections x 32 B and x 4 KiB (msgs/s, server CPU per message with
# its user/kernel split); new wss connections per second (idle mode, HANDSHAKES
# connections, connect to 101 including the TLS handshake; server CPU per connection);
# server RSS per idle wss connection at 10k and 19.5k.
# Knobs: RUNS (3), ECHO_SECS (5), HANDSHAKES (5000), IDLE_SIZES ("10000 19500"),
# PEERS_DIR, SKIP_IDLE=1. Output: stdout and target/compare/tls-results.md.
set -u -o pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
ECHO_SECS=${ECHO_SECS:-5}
HANDSHAKES=${HANDSHAKES:-5000}
IDLE_SIZES=${IDLE_SIZES:-10000 19500}
PEERS_DIR=${PEERS_DIR:-$HOME/.cache/wsloop-peers}
WSLOOP=${WSLOOP:-$REPO/target/release/wsloop}
BENCH=${BENCH:-$REPO/target/release/wsloop-bench}
OUT=$REPO/target/compare
LOGS=$OUT/tls-logs
CERT=$OUT/tls-cert
PORT=${PORT_BASE:-27000}
mkdir -p "$LOGS"
"$REPO/../shared/peers/make-test-cert.sh" "$CERT" >/dev/null
ulimit -n "$(ulimit -Hn)" 2>/dev/null
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
listening() { [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }
in_use() { [ -n "$(ss -Htan "sport = :$1" 2>/dev/null)" ]; }
next_port() { PORT=$((PORT + 1)); while in_use "$PORT"; do PORT=$((PORT + 1)); done; }
get() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

# start NAME: a fresh server on a fresh port; sets SPID, PORT, SCHEME
start() {
    next_port
    local c=$CERT/cert.pem k=$CERT/key.pem
    SCHEME=wss
    case $1 in
        wsloop-ws) SCHEME=ws; set -- "$WSLOOP" echo --listen 127.0.0.1:$PORT --workers 1 ;;
        wsloop) set -- "$WSLOOP" echo --listen 127.0.0.1:$PORT --workers 1 --tls-cert $c --tls-key $k ;;
        tt-echo) set -- "$PEERS_DIR/tt-echo" 127.0.0.1:$PORT --tls $c $k ;;
        gorilla) set -- "$PEERS_DIR/gorilla-echo" -addr 127.0.0.1:$PORT -tls $c,$k ;;
        node-ws) set -- "$PEERS_DIR/ws-node-echo" $PORT --tls $c $k ;;
    esac
    taskset -c 0 "$@" >"$LOGS/server-$PORT.log" 2>&1 &
    SPID=$!
    for _ in $(seq 100); do listening $PORT && return 0; sleep 0.1; done
    log "$1 did not start"; stop; return 1
}
stop() {
    [ -n "${SPID:-}" ] || return 0
    kill -TERM "$SPID" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SPID" 2>/dev/null
    wait "$SPID" 2>/dev/null; SPID=""
}
median() { sort -g | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print "n/a"}'; }
# bench NAME POINT MODE ARGS...: RUNS runs, appends "NAME POINT RESULT ..." to $RES
bench() {
    local name=$1 point=$2 mode=$3; shift 3
    for run in $(seq "$RUNS"); do
        start "$name" || continue
        local f=$LOGS/$name-$point-$run.txt
        timeout -k 5 300 taskset -c 1 "$BENCH" "$mode" --url "$SCHEME://127.0.0.1:$PORT/" --server-pid "$SPID" -q "$@" >"$f" 2>&1
        echo "$name $point $(grep RESULT "$f")" >>"$RES"
        stop
    done
}
col() { # col NAME POINT KEY: median of KEY over the runs of NAME at POINT
    grep "^$1 $2 " "$RES" | while read -r l; do get "$3" " $l"; done | median
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a != "n/a" && b != "n/a") printf "%.2fx", a / b; else print "" }'; }

RES=$OUT/tls-raw.txt
: >"$RES"
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
T0=$(date +%s)
SERVERS="wsloop tt-echo gorilla node-ws"
for size in 32 4096; do
    for s in wsloop-ws $SERVERS; do
        log "echo $s $size B"
        bench "$s" echo-$size echo --conns 100 --size $size --duration "$ECHO_SECS" --warmup 1
    done
done
for s in $SERVERS; do
    log "handshakes $s"
    bench "$s" connects idle --conns "$HANDSHAKES" --hold 0.5 --connect-timeout 60
done
if [ "${SKIP_IDLE:-0}" != 1 ]; then
    for n in $IDLE_SIZES; do
        for s in $SERVERS; do
            log "idle $s $n"
            bench "$s" idle-$n idle --conns "$n" --hold 2 --connect-timeout 120
        done
    done
fi
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

{
    echo "Load average before/after: $LOAD0 / $LOAD1; whole run $(( ($(date +%s) - T0) / 60 )) min."
    echo "Ratios are wsloop (wss)/peer: above 1 is better for msgs/s and connects/s, below 1 for CPU and memory."
    echo
    echo "| echo, 100 conns | server | msgs/s | server CPU µs/msg | user | kernel | wsloop/peer msgs/s | wsloop/peer CPU/msg |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|"
    for size in 32 4096; do
        f=echo-$size
        wm=$(col wsloop "$f" msgs_per_s); wc=$(col wsloop "$f" server_cpu_us_per_msg)
        for s in wsloop-ws $SERVERS; do
            m=$(col $s "$f" msgs_per_s); c=$(col $s "$f" server_cpu_us_per_msg)
            u=$(col $s "$f" server_user_us_per_msg); k=$(col $s "$f" server_sys_us_per_msg)
            label=$s; [ $s = wsloop-ws ] && label="wsloop over ws:// (TLS's cost: wss/ws)"
            [ $s = wsloop ] && label="wsloop over wss://"
            r1=""; r2=""; [ $s != wsloop ] && { r1=$(ratio "$wm" "$m"); r2=$(ratio "$wc" "$c"); }
            echo "| $size B | $label | $m | $c | $u | $k | $r1 | $r2 |"
        done
    done
    echo
    echo "| new wss connections ($HANDSHAKES, ECDSA P-256) | connects/s | handshake p50 µs | server CPU µs/conn | wsloop/peer connects/s | wsloop/peer CPU/conn |"
    echo "|---|---:|---:|---:|---:|---:|"
    f=connects
    wr=$(col wsloop "$f" connect_per_s); wc=$(col wsloop "$f" server_cpu_us_per_conn)
    for s in $SERVERS; do
        r=$(col $s "$f" connect_per_s); c=$(col $s "$f" server_cpu_us_per_conn); p=$(col $s "$f" p50_us)
        r1=""; r2=""; [ $s != wsloop ] && { r1=$(ratio "$wr" "$r"); r2=$(ratio "$wc" "$c"); }
        echo "| $s | $r | $p | $c | $r1 | $r2 |"
    done
    if [ "${SKIP_IDLE:-0}" != 1 ]; then
        echo
        echo "| idle wss connections | server | bytes/conn | server RSS kB | opened | wsloop/peer bytes |"
        echo "|---|---|---:|---:|---:|---:|"
        for n in $IDLE_SIZES; do
            f=idle-$n
            wb=$(col wsloop $f bytes_per_conn)
            for s in $SERVERS; do
                b=$(col $s $f bytes_per_conn); kb=$(col $s $f server_rss_kb); o=$(col $s $f conns)
                r=""; [ $s != wsloop ] && r=$(ratio "$wb" "$b")
                echo "| $n | $s | $b | $kb | $o | $r |"
            done
        done
    fi
} | tee "$OUT/tls-results.md"
