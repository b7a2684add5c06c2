#!/usr/bin/env bash
# Runs every test of wsloop on a fresh machine: installs what the tests need (Debian
# packages, the Python websockets client), then the whole cargo test suite with all
# features, fuzz seed corpora included. Under CI=true a missing service is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v redis-server >/dev/null || need_pkgs+=(redis-server)
# redis-cli: tests/redis_cluster.rs creates its Redis Cluster with `redis-cli --cluster create`.
command -v redis-cli >/dev/null || need_pkgs+=(redis-tools)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_pkgs+=(nginx)
# promtool: tests/metrics_promtool.rs and tests/deploy_monitoring.rs (rules check and test).
command -v promtool >/dev/null || need_pkgs+=(prometheus)
# tests/browser.rs: headless Chromium driven by playwright-core (npm, below).
[ -x /usr/bin/chromium ] || need_pkgs+=(chromium)
# openssl: tests/tls.rs and tests/redis_tls.rs make their test CA and certificates with it;
# tests/tls.rs uses s_client.
command -v openssl >/dev/null || need_pkgs+=(openssl)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "test.sh: installing ${need_pkgs[*]}"
  # Another apt or dpkg may be running on a shared machine: wait for its lock (up to
  # 10 minutes) instead of failing.
  wait_lock=(-o DPkg::Lock::Timeout=600)
  if [ "$(id -u)" = 0 ]; then
    apt-get "${wait_lock[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive apt-get "${wait_lock[@]}" install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  else
    sudo apt-get "${wait_lock[@]}" update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get "${wait_lock[@]}" install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  fi
fi
python3 -c 'import websockets' 2>/dev/null || python3 -m pip install -q websockets
# playwright-core only (never its browser download): it drives Debian's /usr/bin/chromium.
[ -d tests/browser/node_modules/playwright-core ] || (cd tests/browser && npm install --silent --no-audit --no-fund)
# tests/deflate.rs: Node's ws client (permessage-deflate in both modes).
[ -d tests/node/node_modules/ws ] || (cd tests/node && npm install --silent --no-audit --no-fund)

# Tests hold up to ~20,000 sockets across processes; the hard limit here is 20,000.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo test --all-features --all-targets -- "$@"
cargo test --all-features --doc
