#!/usr/bin/env bash
# A virtual environment with another livekit-agents version and this checkout of lksup, for
# the tests of agents that run on their own interpreter (`python:`) and of the oldest end of
# the supported SDK window. Prints the interpreter's path. Idempotent (a stamp records what
# was installed).
# Usage: scripts/sdk-venv.sh [VERSION]   (default: the oldest tested version, 1.6.10)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
version="${1:-1.6.10}"
venv="$root/.cache/sdk-venvs/livekit-agents-$version"
python="${PYTHON:-python3}"
stamp="$venv/.lksup-installed"
want="livekit-agents==$version $(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "sdk-venv: installing livekit-agents $version and lksup into $venv" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "livekit-agents==$version" "livekit-plugins-silero==$version" -e "$root" >&2
  echo "$want" >"$stamp"
fi
echo "$venv/bin/python"
