#!/usr/bin/env bash
# Run the whole test suite (unit, simulation, multi-process, fault-injection, browser, benchmark smoke).
# Extra arguments go to pytest, e.g. ./run_tests.sh -k storage
set -euo pipefail
cd "$(dirname "$0")"
./run_cluster.sh setup
if [[ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]]; then
  echo "The browser tests need Chromium at /usr/bin/chromium: sudo apt-get install -y chromium" >&2
  exit 1
fi
if ! command -v wrk > /dev/null; then
  echo "The benchmark smoke test needs wrk: sudo apt-get install -y wrk" >&2
  exit 1
fi
exec .venv/bin/python -m pytest "$@"
