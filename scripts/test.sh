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
echo "== livekit-server (real server for the interop tests)"
set +e
"$root/scripts/livekit-server.sh" >/dev/null
built=$?
set -e
if [ "$built" -eq 3 ] && [ -z "${CI:-}" ]; then
  echo "Go is not installed: the interop tests against the real server will be skipped"
elif [ "$built" -ne 0 ]; then
  echo "building livekit-server failed (exit $built)"; status=1
fi
echo "== redis-server (the Redis the multi-node tests' livekit-server nodes share)"
set +e
"$root/scripts/redis-server.sh" >/dev/null
found=$?
set -e
if [ "$found" -eq 3 ] && [ -z "${CI:-}" ]; then
  echo "redis-server is not installed and cannot be installed here: the multi-node tests will be skipped"
elif [ "$found" -ne 0 ]; then
  echo "installing redis-server failed (exit $found)"; status=1
fi
echo "== deploy/kubernetes (the Go checker tests/deploy runs, built once)"
set +e
"$root/scripts/validate-deploy.sh" >/dev/null
checked=$?
set -e
if [ "$checked" -eq 3 ] && [ -z "${CI:-}" ]; then
  echo "Go is not installed: the Kubernetes manifest tests will be skipped"
elif [ "$checked" -ne 0 ]; then
  echo "checking the Kubernetes manifests failed (exit $checked)"; status=1
fi
echo "== livekit-agents 1.6.10 environment (the oldest end of the supported SDK window)"
"$root/scripts/sdk-venv.sh" 1.6.10 >/dev/null || { echo "creating it failed"; status=1; }
echo "== pytest"
"$bin/python" -m pytest "$@" || status=1
exit $status
