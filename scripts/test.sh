#!/usr/bin/env bash
# The project's one test command: lint, format check, types, then the test suite.
# Extra arguments go to pytest (for example: scripts/test.sh -k diff -x).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
"$root/scripts/bootstrap.sh"
bin="$root/.venv/bin"
status=0
echo "== ruff check" && "$bin/ruff" check . || status=1
echo "== ruff format --check" && "$bin/ruff" format --check . || status=1
echo "== mypy --strict" && "$bin/mypy" || status=1
# prepare TITLE SCRIPT SKIPPED FAILED: run scripts/SCRIPT once before the tests; its exit 3
# (a tool this machine lacks) only skips those tests locally, and fails in CI.
prepare() {
  echo "== $1"
  set +e
  "$root/scripts/$2" >/dev/null
  local code=$?
  set -e
  if [ "$code" -eq 3 ] && [ -z "${CI:-}" ]; then
    echo "$3"
  elif [ "$code" -ne 0 ]; then
    echo "$4 (exit $code)"; status=1
  fi
}
prepare "livekit-server (real server for the interop tests)" livekit-server.sh \
  "Go is not installed: the interop tests against the real server will be skipped" \
  "building livekit-server failed"
prepare "redis-server (the Redis the multi-node tests' livekit-server nodes share)" \
  redis-server.sh \
  "redis-server is not installed and cannot be installed here: the multi-node tests will be skipped" \
  "installing redis-server failed"
prepare "deploy/kubernetes (the Go checker tests/deploy runs, built once)" validate-deploy.sh \
  "Go is not installed: the Kubernetes manifest tests will be skipped" \
  "checking the Kubernetes manifests failed"
echo "== livekit-agents 1.6.10 environment (the oldest end of the supported SDK window)"
"$root/scripts/sdk-venv.sh" 1.6.10 >/dev/null || { echo "creating it failed"; status=1; }
echo "== pytest"
"$bin/python" -m pytest "$@" || status=1
exit $status
