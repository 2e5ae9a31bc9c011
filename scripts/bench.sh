#!/usr/bin/env bash
# Errand's benchmarks (docs/benchmarks.md): HTTP throughput/latency, Redis memory per live
# grant, and memory after expiry. Each starts its own redis-server on a free port on
# 127.0.0.1 (never the one on 6379) and its own broker; nothing outside loopback is touched.
#
#   bash scripts/bench.sh                      # all three, defaults (about 7 minutes)
#   BENCH_JSON=1 bash scripts/bench.sh         # plus one JSON summary line per benchmark
#   BENCH_HTTP_ARGS="--workers 3 --duration 10" bash scripts/bench.sh
#   BENCH_ONLY=memory bash scripts/bench.sh    # http | memory | expiry
#
# Creates or reuses .venv (make venv). Installs redis-server and wrk with apt-get when they
# are missing and we are root; without wrk the HTTP benchmark falls back to a Python load
# generator and says so.
set -euo pipefail
cd "$(dirname "$0")/.."

make --no-print-directory venv
PY=.venv/bin/python

apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bench: installing $* with apt-get" >&2
    (apt-get install -y -qq "$@" || (apt-get update -qq && apt-get install -y -qq "$@")) >/dev/null 2>&1 || true
  fi
}
command -v redis-server >/dev/null 2>&1 || apt_install redis-server
command -v wrk >/dev/null 2>&1 || apt_install wrk
if ! command -v wrk >/dev/null 2>&1; then
  echo "bench: wrk is not available: the HTTP benchmark uses its Python fallback generator" >&2
fi

json=()
if [ "${BENCH_JSON:-0}" = 1 ]; then json=(--json); fi
only="${BENCH_ONLY:-all}"
read -r -a http_args <<<"${BENCH_HTTP_ARGS:-}"
read -r -a memory_args <<<"${BENCH_MEMORY_ARGS:-}"
read -r -a expiry_args <<<"${BENCH_EXPIRY_ARGS:-}"

status=0
run() {
  local name=$1
  shift
  echo
  echo "=== $name: $*"
  local start=$SECONDS
  # Each benchmark bounds its own loops (each takes under 5 minutes); timeout is the last resort.
  timeout --signal=INT --kill-after=30 420 "$@" || { echo "bench: $name exited with $?" >&2; status=1; }
  echo "=== $name took $((SECONDS - start)) s"
}

if [ "$only" = all ] || [ "$only" = http ]; then
  run http "$PY" scripts/bench_http.py "${http_args[@]}" "${json[@]}"
fi
if [ "$only" = all ] || [ "$only" = memory ]; then
  run memory "$PY" scripts/bench_memory.py "${memory_args[@]}" "${json[@]}"
fi
if [ "$only" = all ] || [ "$only" = expiry ]; then
  run expiry "$PY" scripts/bench_expiry.py "${expiry_args[@]}" "${json[@]}"
fi
exit "$status"
