#!/usr/bin/env bash
# Install lksup into .venv and run the development fleet on the embedded defaults: no LiveKit
# deployment needed. The supervisor starts with its own dev server, a job is dispatched to each
# agent, `lksup status` shows them running, then SIGTERM drains the fleet.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
"$root/scripts/bootstrap.sh"
lksup="$root/.venv/bin/lksup"

work=$(mktemp -d /tmp/lksup-demo.XXXXXX)
port=$("$root/.venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export LKSUP_SOCKET="$work/lksup.sock" LKSUP_STATE_DIR="$work/state"
export LIVEKIT_URL="ws://127.0.0.1:$port" LIVEKIT_API_KEY=devkey
export LIVEKIT_API_SECRET=secret-for-local-development-only   # the dev server's documented key

echo "== lksup validate --check-imports fleets/*.yaml"
"$lksup" validate --check-imports fleets/dev.yaml
echo
echo "== lksup run fleets/dev.yaml --dev-server 127.0.0.1:$port   (log: $work/daemon.log)"
"$lksup" run fleets/dev.yaml --dev-server "127.0.0.1:$port" --set hold_seconds=8 \
  --log-format console >"$work/daemon.log" 2>&1 &
daemon=$!
trap 'kill -KILL "$daemon" 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  if "$lksup" status --check >/dev/null 2>&1; then break; fi
  if ! kill -0 "$daemon" 2>/dev/null; then cat "$work/daemon.log"; exit 1; fi
  sleep 0.5
done
"$lksup" status
echo
for agent in customer-service sales survey; do
  "$lksup" dispatch "$agent" --room "$agent-demo" 2>/dev/null
done
sleep 2
echo
echo "== lksup status --jobs"
"$lksup" status --jobs
echo
echo "== SIGTERM: the fleet drains (jobs finish), then the supervisor exits"
kill -TERM "$daemon"
status=0
wait "$daemon" || status=$?
grep -E "job started|job done|draining|drained" "$work/daemon.log" | sed 's/^/  /' || true
echo "supervisor exited with status $status"
trap - EXIT
rm -rf "$work"
exit "$status"
