#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv with the package installed
# in editable mode and the test/lint tools. Idempotent: re-runs pip only when pyproject.toml
# changed since the last successful install.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${LKSUP_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

"$python" - <<'PY' || { echo "lksup needs Python >= 3.11 (found $("$python" --version 2>&1))" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

if [ ! -x "$venv/bin/python" ]; then
  echo "bootstrap: creating $venv" >&2
  "$python" -m venv "$venv"
fi
stamp="$venv/.lksup-installed"
want=$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "bootstrap: installing lksup and its development tools into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root[dev]"
  echo "$want" >"$stamp"
fi
