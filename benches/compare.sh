#!/usr/bin/env bash
# Side-by-side benchmark: wsloop against tokio-tungstenite, gorilla/websocket and
# (echo/idle only) fastwebsockets. One command from a clean checkout:
#
#   benches/compare.sh
#
# Builds wsloop (release, features cli+bench) and the peer servers
# (../shared/peers/build-all.sh relative to the repository), then runs the matrix with
# the server pinned to CPU 0 and the load generator (wsloop-bench) to CPU 1. Every run
# starts a fresh server on a fresh port and stops it by its PID; every point runs RUNS
# times and the table shows medians. Output: stdout and target/compare/results.md.
#
# Knobs (environment): RUNS (3), ECHO_SECS (5), WARMUP_SECS (1), IDLE_HOLD (2),
# BCAST_SECS (5), SKIP_BUILD=1 (use existing binaries), SKIP_FWS=1, PEERS_DIR,
# PORT_BASE (21000), SERVER_CPU (0), LOAD_CPU (1).
set -u -o pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
RUNS=${RUNS:-3}
ECHO_SECS=${ECHO_SECS:-5}
WARMUP_SECS=${WARMUP_SECS:-1}
IDLE_HOLD=${IDLE_HOLD:-2}
BCAST_SECS=${BCAST_SECS:-5}
PEERS_DIR=${PEERS_DIR:-$HOME/.cache/wsloop-peers}
export PEERS_DIR
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PORT=${PORT_BASE:-21000}
OUT=$REPO/target/compare
LOGS=$OUT/logs
WSLOOP=$REPO/target/release/wsloop
BENCH=$REPO/target/release/wsloop-bench
START=$(date +%s)

mkdir -p "$LOGS"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# ---------------------------------------------------------------- build
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "building wsloop + wsloop-bench (release)"
    timeout 1200 cargo build --release --features cli,bench --bin wsloop --bin wsloop-bench >&2 \
        || { log "cargo build failed"; exit 1; }
    log "building peer servers into $PEERS_DIR"
    timeout 1800 "$REPO/../shared/peers/build-all.sh" >&2 || { log "peer build failed"; exit 1; }
fi
for b in "$WSLOOP" "$BENCH" "$PEERS_DIR/gorilla-echo" "$PEERS_DIR/gorilla-chat" \
         "$PEERS_DIR/tt-echo" "$PEERS_DIR/tt-broadcast"; do
    [ -x "$b" ] || { log "missing binary: $b"; exit 1; }
done
HAVE_FWS=0
[ "${SKIP_FWS:-0}" != 1 ] && [ -x "$PEERS_DIR/fws-echo" ] && HAVE_FWS=1

# Both the servers and the generator need ~20k descriptors for the 19.5k idle point.
ulimit -n "$(ulimit -Hn)" 2>/dev/null
NOFILE=$(ulimit -n)
IDLE_BIG=19500
if [ "$NOFILE" != unlimited ] && [ "$NOFILE" -lt 19600 ]; then
    IDLE_BIG=$((NOFILE - 500))
    log "ulimit -n is $NOFILE: the big idle point uses $IDLE_BIG connections"
fi

# ---------------------------------------------------------------- servers
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -KILL "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
    fi
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT TERM

port_listening() { [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }
port_in_use() { [ -n "$(ss -Htan "sport = :$1" 2>/dev/null)" ]; }

# next_port: a port with no socket on it at all (listening, open or TIME_WAIT).
next_port() {
    PORT=$((PORT + 1))
    while port_in_use "$PORT"; do PORT=$((PORT + 1)); done
}

# start_server NAME KIND: starts a fresh server on a fresh port, sets SERVER_PID and PORT.
start_server() {
    local name=$1 kind=$2 log_file
    next_port
    log_file=$LOGS/server-$name-$kind-$PORT.log
    local -a cmd
    case "$name/$kind" in
        wsloop/echo)       cmd=("$WSLOOP" echo --listen "127.0.0.1:$PORT" --workers 1 --drain-timeout 1) ;;
        wsloop/broadcast)  cmd=("$WSLOOP" rooms --listen "127.0.0.1:$PORT" --workers 1 --drain-timeout 1) ;;
        gorilla/echo)      cmd=("$PEERS_DIR/gorilla-echo" -addr "127.0.0.1:$PORT") ;;
        gorilla/broadcast) cmd=("$PEERS_DIR/gorilla-chat" -addr "127.0.0.1:$PORT") ;;
        tt/echo)           cmd=("$PEERS_DIR/tt-echo" "127.0.0.1:$PORT") ;;
        tt/broadcast)      cmd=("$PEERS_DIR/tt-broadcast" "127.0.0.1:$PORT") ;;
        fws/echo)          cmd=("$PEERS_DIR/fws-echo" "127.0.0.1:$PORT") ;;
        *) log "no server for $name/$kind"; return 1 ;;
    esac
    # taskset execs the server: $! is the server's own PID.
    taskset -c "$SERVER_CPU" "${cmd[@]}" >"$log_file" 2>&1 &
    SERVER_PID=$!
    local i
    for i in $(seq 100); do
        port_listening "$PORT" && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    log "server $name/$kind did not listen on $PORT (see $log_file)"
    stop_server
    return 1
}

# stop_server: SIGTERM, wait up to 5 s, then SIGKILL; always by PID.
stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    kill -TERM "$SERVER_PID" 2>/dev/null
    local i
    for i in $(seq 50); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -KILL "$SERVER_PID" 2>/dev/null
    fi
    wait "$SERVER_PID" 2>/dev/null
    SERVER_PID=""
}

# ---------------------------------------------------------------- results
# Results are stored as lines "point server key value" in $OUT/raw.txt.
RAW=$OUT/raw.txt
: >"$RAW"

get() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

# run_bench POINT SERVER TIMEOUT KEYS... -- BENCH_ARGS...
run_bench() {
    local point=$1 name=$2 limit=$3; shift 3
    local -a keys=()
    while [ "$1" != -- ]; do keys+=("$1"); shift; done
    shift
    local out line k v
    out=$LOGS/bench-$point-$name-$PORT.log
    timeout -k 5 "$limit" taskset -c "$LOAD_CPU" "$BENCH" "$@" --server-pid "$SERVER_PID" -q \
        >"$out" 2>&1
    local rc=$?
    line=$(grep '^RESULT' "$out" | tail -1)
    if [ -z "$line" ]; then
        log "  $point $name: no RESULT (exit $rc, see $out)"
        return 1
    fi
    [ "$rc" = 0 ] || log "  $point $name: exit $rc (errors=$(get errors "$line"))"
    local summary=""
    for k in "${keys[@]}"; do
        v=$(get "$k" "$line")
        [ -n "$v" ] && echo "$point $name $k $v" >>"$RAW"
        summary+=" $k=$v"
    done
    log "  $point $name:$summary"
}

median() { # POINT SERVER KEY -> median of the runs, or empty
    awk -v p="$1" -v s="$2" -v k="$3" '$1==p && $2==s && $3==k {print $4}' "$RAW" | sort -g |
        awk '{v[NR]=$1} END {if (NR==0) exit; if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'
}

# ---------------------------------------------------------------- kernel memory probe
# Snapshot of total slab bytes (active objects x object size) and TCP memory pages.
# proc_inode_cache is left out: it grows when anything lists /proc/PID/fd, not per socket.
slab_bytes() { awk 'NR>2 && $1!="proc_inode_cache" {s+=$2*$4} END {printf "%d\n", s}' /proc/slabinfo 2>/dev/null; }
tcp_inuse() { awk '/^TCP:/ {print $3}' /proc/net/sockstat; }
tcp_mem_pages() { awk '/^TCP:/ {for (i=1;i<=NF;i++) if ($i=="mem") print $(i+1)}' /proc/net/sockstat; }

# probe_kernel N OUTFILE: waits (max 40 s) until 2N more TCP sockets are in use, then
# records the slab and sockstat deltas. Runs in the background during an idle run.
probe_kernel() {
    local n=$1 f=$2 base_in base_slab base_mem i
    base_in=$(tcp_inuse); base_slab=$(slab_bytes); base_mem=$(tcp_mem_pages)
    cp /proc/slabinfo "$f.before" 2>/dev/null
    for i in $(seq 400); do
        [ "$(tcp_inuse)" -ge $((base_in + 2 * n)) ] && break
        sleep 0.1
    done
    sleep 0.3
    cp /proc/slabinfo "$f.during" 2>/dev/null
    echo "sockets $(( $(tcp_inuse) - base_in )) slab_delta $(( $(slab_bytes) - base_slab )) tcp_mem_pages_delta $(( $(tcp_mem_pages) - base_mem ))" >"$f"
}

# ---------------------------------------------------------------- matrix
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
ECHO_SERVERS="wsloop gorilla tt"
[ "$HAVE_FWS" = 1 ] && ECHO_SERVERS+=" fws"
BCAST_SERVERS="wsloop gorilla tt"
# point:conns:size[:inflight] (messages in flight per connection; 1 when left out)
ECHO_POINTS="echo-1x32:1:32 echo-100x32:100:32 echo-1000x32:1000:32 echo-100x4k:100:4096 echo-100x32p16:100:32:16"
ECHO_LIMIT=$(awk -v d="$ECHO_SECS" -v w="$WARMUP_SECS" 'BEGIN {printf "%d", d + w + 25}')
BCAST_LIMIT=$(awk -v d="$BCAST_SECS" -v w="$WARMUP_SECS" 'BEGIN {printf "%d", d + w + 30}')

for run in $(seq "$RUNS"); do
    log "=== run $run/$RUNS"
    for pt in $ECHO_POINTS; do
        IFS=: read -r point conns size inflight <<<"$pt"
        for s in $ECHO_SERVERS; do
            start_server "$s" echo || continue
            run_bench "$point" "$s" "$ECHO_LIMIT" msgs_per_s p99_us server_cpu_us_per_msg server_cpu_pct load_cpu_pct \
                server_user_us_per_msg server_sys_us_per_msg -- \
                echo --url "ws://127.0.0.1:$PORT/" --conns "$conns" --size "$size" --inflight "${inflight:-1}" \
                --duration "$ECHO_SECS" --warmup "$WARMUP_SECS"
            stop_server
        done
    done
    for n in 10000 "$IDLE_BIG"; do
        for s in $ECHO_SERVERS; do
            start_server "$s" echo || continue
            probe_pid=""
            if [ "$s" = wsloop ]; then
                probe_kernel "$n" "$OUT/kernel-$n-run$run.txt" &
                probe_pid=$!
            fi
            # The generator bounds its own connect phase (10 s + n/2000 s) and close (5 s).
            run_bench "idle-$n" "$s" $((IDLE_HOLD + 45 + n / 2000)) bytes_per_conn server_rss_kb conns connect_per_s -- \
                idle --url "ws://127.0.0.1:$PORT/" --conns "$n" --hold "$IDLE_HOLD"
            stop_server
            if [ -n "$probe_pid" ]; then
                # The probe gives up by itself after ~40 s; do not wait that long.
                for i in $(seq 20); do kill -0 "$probe_pid" 2>/dev/null || break; sleep 0.1; done
                kill "$probe_pid" 2>/dev/null
                wait "$probe_pid" 2>/dev/null
            fi
        done
    done
    for s in $BCAST_SERVERS; do
        start_server "$s" broadcast || continue
        run_bench bcast "$s" "$BCAST_LIMIT" deliveries_per_s delivery_ratio p99_us server_cpu_us_per_msg server_cpu_pct -- \
            broadcast --url "ws://127.0.0.1:$PORT/bench" --subs 1000 --rate 1000 --size 64 \
            --duration "$BCAST_SECS" --warmup "$WARMUP_SECS"
        stop_server
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
ELAPSED=$(( $(date +%s) - START ))

# ---------------------------------------------------------------- table
label() { case $1 in wsloop) echo wsloop ;; gorilla) echo gorilla ;; tt) echo tokio-tungstenite ;; fws) echo fastwebsockets ;; esac; }
fmt_int() { # thousands separators without depending on installed locales
    [ -z "$1" ] && { echo -; return; }
    printf "%.0f" "$1" | sed -e ':a' -e 's/\([0-9]\)\([0-9]\{3\}\)\($\|,\)/\1,\2\3/' -e 'ta'
}
fmt_f() { [ -z "$1" ] && { echo -; return; }; printf "%.${2:-2}f" "$1"; }
ratio() { # A B -> A/B
    if [ -z "$1" ] || [ -z "$2" ]; then echo -; return; fi
    awk -v a="$1" -v b="$2" 'BEGIN {if (b == 0) print "-"; else printf "%.2fx\n", a / b}'
}

export LC_NUMERIC=C

{
    echo "### wsloop vs peers ($(date -u +%Y-%m-%d), medians of $RUNS runs)"
    echo
    echo "Machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), Linux $(uname -r);"
    echo "server pinned to CPU $SERVER_CPU, wsloop-bench to CPU $LOAD_CPU (1 generator thread); wsloop with --workers 1."
    echo "Echo ${ECHO_SECS} s after ${WARMUP_SECS} s warmup, one message in flight per connection unless a row says more; idle hold ${IDLE_HOLD} s;"
    echo "broadcast ${BCAST_SECS} s. Load average before/after: $LOAD_BEFORE / $LOAD_AFTER. Whole run: $((ELAPSED / 60)) min $((ELAPSED % 60)) s."
    echo "Ratios are wsloop/peer: above 1 is better for msgs/s and deliveries/s, below 1 is better for p99, CPU and memory."
    echo
    echo "#### Echo (msgs/s, p99 latency, server CPU µs per message)"
    echo
    echo "| test | server | msgs/s | p99 µs | CPU µs/msg | of it user | of it kernel | server CPU % | wsloop/peer msgs/s | wsloop/peer CPU/msg |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for pt in $ECHO_POINTS; do
        IFS=: read -r point conns size inflight <<<"$pt"
        sz=$size; [ "$size" = 4096 ] && sz=4KiB; [ "$size" = 32 ] && sz="32 B"
        [ -n "$inflight" ] && sz="$sz, $inflight in flight"
        wm=$(median "$point" wsloop msgs_per_s); wc=$(median "$point" wsloop server_cpu_us_per_msg)
        for s in $ECHO_SERVERS; do
            m=$(median "$point" "$s" msgs_per_s); p=$(median "$point" "$s" p99_us)
            c=$(median "$point" "$s" server_cpu_us_per_msg); u=$(median "$point" "$s" server_cpu_pct)
            cu=$(median "$point" "$s" server_user_us_per_msg); ck=$(median "$point" "$s" server_sys_us_per_msg)
            if [ "$s" = wsloop ]; then r1=""; r2=""; else r1=$(ratio "$wm" "$m"); r2=$(ratio "$wc" "$c"); fi
            echo "| $conns conns x $sz | $(label "$s") | $(fmt_int "$m") | $(fmt_int "$p") | $(fmt_f "$c") | $(fmt_f "$cu") | $(fmt_f "$ck") | $(fmt_f "$u" 0) | $r1 | $r2 |"
        done
    done
    echo
    echo "#### Idle memory (server RSS growth per open connection)"
    echo
    echo "| connections | server | bytes/conn | server RSS | connects/s | wsloop/peer bytes |"
    echo "|---|---|---:|---:|---:|---:|"
    for n in 10000 "$IDLE_BIG"; do
        wb=$(median "idle-$n" wsloop bytes_per_conn)
        for s in $ECHO_SERVERS; do
            b=$(median "idle-$n" "$s" bytes_per_conn); rss=$(median "idle-$n" "$s" server_rss_kb)
            cc=$(median "idle-$n" "$s" conns); cps=$(median "idle-$n" "$s" connect_per_s)
            r=""; [ "$s" = wsloop ] || r=$(ratio "$wb" "$b")
            note=""; [ -n "$cc" ] && [ "${cc%.*}" -lt "$n" ] && note=" (only ${cc%.*} connected)"
            echo "| $(fmt_int "$n") | $(label "$s") | $(fmt_int "$b")$note | $( [ -n "$rss" ] && echo "$(fmt_f "$(awk -v k="$rss" 'BEGIN {print k / 1024}')" 1) MB" || echo -) | $(fmt_int "$cps") | $r |"
        done
    done
    echo
    echo "#### Broadcast: 1000 subscribers, publisher 1000 msgs/s x 64 B (1M deliveries/s asked)"
    echo
    echo "| server | deliveries/s | delivery ratio | p99 µs | CPU µs/delivery | server CPU % | wsloop/peer deliveries/s | wsloop/peer CPU/delivery |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    wd=$(median bcast wsloop deliveries_per_s); wc=$(median bcast wsloop server_cpu_us_per_msg)
    for s in $BCAST_SERVERS; do
        d=$(median bcast "$s" deliveries_per_s); dr=$(median bcast "$s" delivery_ratio)
        p=$(median bcast "$s" p99_us); c=$(median bcast "$s" server_cpu_us_per_msg); u=$(median bcast "$s" server_cpu_pct)
        if [ "$s" = wsloop ]; then r1=""; r2=""; else r1=$(ratio "$wd" "$d"); r2=$(ratio "$wc" "$c"); fi
        echo "| $(label "$s") | $(fmt_int "$d") | $(fmt_f "$dr" 3) | $(fmt_int "$p") | $(fmt_f "$c" 3) | $(fmt_f "$u" 0) | $r1 | $r2 |"
    done
    echo
    kfile=$(ls "$OUT"/kernel-"$IDLE_BIG"-run*.txt 2>/dev/null | head -1)
    if [ -n "$kfile" ]; then
        echo "#### Kernel memory per connection (wsloop idle runs, /proc/slabinfo delta without proc_inode_cache)"
        echo
        echo "| connections | run | TCP sockets (both ends) | slab bytes delta | slab bytes per socket | sockstat TCP mem pages delta |"
        echo "|---|---|---:|---:|---:|---:|"
        for f in "$OUT"/kernel-*-run*.txt; do
            n=$(basename "$f" .txt | cut -d- -f2); r=$(basename "$f" .txt | cut -d- -f3)
            read -r _ socks _ sd _ mp <"$f"
            per=$(awk -v d="$sd" -v s="$socks" 'BEGIN {if (s > 0) printf "%d", d / s; else print "-"}')
            echo "| $(fmt_int "$n") | $r | $(fmt_int "$socks") | $(fmt_int "$sd") | $(fmt_int "$per") | $mp |"
        done
        echo
        echo "Largest slab caches growing in the first $(fmt_int "$IDLE_BIG")-connection run (both ends of every connection are on this host):"
        echo
        echo '```'
        awk 'NR==FNR {if (FNR>2) b[$1]=$2*$4; next} FNR>2 {d=$2*$4-b[$1]; if (d>100000) printf "%-22s %12d bytes  %6d B/object\n", $1, d, $4}' \
            "$kfile.before" "$kfile.during" | sort -k2 -nr | head -10
        echo '```'
    fi
} >"$OUT/results.md"

cat "$OUT/results.md"
log "done in $ELAPSED s; results in $OUT/results.md, raw values in $RAW, logs in $LOGS"
