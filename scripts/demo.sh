#!/usr/bin/env bash
# Install lksup into .venv and run it on the embedded defaults: the example fleets are
# validated (with every agent's entrypoint import-checked in a subprocess), the development
# fleet is rendered in normalized form, and the plan from the development fleet to the
# production fleet is shown.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
"$root/scripts/bootstrap.sh"
lksup="$root/.venv/bin/lksup"
# Example credentials so the production fleet's secret references resolve for the checks;
# real deployments set these in the environment or mount them as files.
export LIVEKIT_API_KEY="${LIVEKIT_API_KEY:-devkey}"
export LIVEKIT_API_SECRET="${LIVEKIT_API_SECRET:-demo-secret-that-is-long-enough-0123}"

echo "== lksup validate --check-imports fleets/*.yaml"
"$lksup" validate --check-imports fleets/*.yaml
echo
echo "== lksup render fleets/dev.yaml (normalized, first 25 lines)"
"$lksup" render fleets/dev.yaml | head -n 25
echo "   ..."
echo
echo "== lksup diff fleets/prod.yaml --against fleets/dev.yaml"
set +e
"$lksup" diff fleets/prod.yaml --against fleets/dev.yaml
status=$?
set -e
# diff exits 1 when there are changes: that is the expected outcome here.
[ "$status" -le 1 ] || exit "$status"
echo
echo "lksup is installed in .venv: try .venv/bin/lksup --help"
