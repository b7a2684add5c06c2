#!/bin/sh
# The reconnect-storm benchmark of room history (README, "Room history and recovery"):
# 10,000 clients of 10 rooms come back at once, 100 messages behind, against history in
# memory and in Redis streams, with a live-only reconnect as the baseline. The server
# runs on core 0 (with redis-server), the clients on core 1.
#   scripts/history-bench.sh [clients] [rooms]
set -eu
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || echo "redis-server not installed: the Redis run is skipped (scripts/test.sh installs it)"
ulimit -n 20000 2>/dev/null || true
exec nice -n 19 cargo bench --bench history_recovery --features redis -- "${1:-10000}" "${2:-10}"
