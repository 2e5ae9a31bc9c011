#!/usr/bin/env bash
# Runs the whole suite. The tests start their own redis-server on a free port; they never
# touch a Redis on 6379. Installs redis-server, and Debian's chromium (the web console's
# browser test, tests/e2e/test_console_browser.py), with apt-get when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server not found; installing it with apt-get" >&2
  (apt-get update -qq && apt-get install -y -qq redis-server) >&2
fi
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  echo "chromium not found; installing it with apt-get (the console's browser test needs it)" >&2
  (apt-get update -qq && apt-get install -y -qq chromium) >&2
fi
set +e
# Two pytest workers (pytest-xdist), a test file per worker at a time so a module's stack is
# started once: most of the suite waits on real processes, so two workers halve the wall time
# even on two cores. ERRAND_TEST_WORKERS=0 runs everything in one process.
workers="${ERRAND_TEST_WORKERS:-2}"
if [ "$workers" = "0" ]; then
  .venv/bin/python -m pytest "$@"
else
  .venv/bin/python -m pytest -n "$workers" --dist loadfile "$@"
fi
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
