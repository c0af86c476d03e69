#!/usr/bin/env bash
# Install lksup into a new virtual environment at PREFIX: the install step of the image
# (Containerfile), of a host for the systemd unit (PREFIX /opt/lksup), and what tests/deploy
# runs into a temporary directory to check both.
#
# Exit codes: 0 installed, 1 failed, 2 usage error.
set -euo pipefail

usage() {
    cat <<USAGE
Usage: $(basename "$0") [--no-constraints] PREFIX [SOURCE]

Creates a virtual environment at PREFIX (which must not exist yet) with \${PYTHON:-python3}
(3.11 or newer), installs lksup from SOURCE (a source tree or a wheel; default: the
repository this script belongs to) with its dependencies at the versions pinned in
constraints.txt beside this script, and checks that PREFIX/bin/lksup runs.

Options:
  --no-constraints  take the newest dependency versions pyproject.toml allows (to refresh
                    constraints.txt)
  -h, --help        show this help and exit

pip reads its usual PIP_* variables (the image sets PIP_NO_CACHE_DIR=1).
USAGE
}

log() { printf 'install: %s\n' "$*" >&2; }

here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
constraints=("--constraint" "$here/constraints.txt")
args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --no-constraints) constraints=(); shift ;;
        -h|--help) usage; exit 0 ;;
        -*) log "unknown option: $1"; usage >&2; exit 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
if [[ ${#args[@]} -lt 1 || ${#args[@]} -gt 2 ]]; then
    usage >&2
    exit 2
fi
prefix="${args[0]}"
source="${args[1]:-$(cd -- "$here/../.." && pwd -P)}"
python="${PYTHON:-python3}"

if [[ -e "$prefix" ]]; then
    log "$prefix exists; give a new directory"
    exit 2
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    log "lksup needs Python >= 3.11; $python is $("$python" --version 2>&1 || echo missing)"
    exit 1
fi

log "creating $prefix with $("$python" --version)"
"$python" -m venv "$prefix"
log "installing lksup from $source"
"$prefix/bin/python" -m pip install --quiet --disable-pip-version-check \
    "${constraints[@]}" "$source"
version="$("$prefix/bin/lksup" --version)"
log "installed: $version ($prefix/bin/lksup)"
