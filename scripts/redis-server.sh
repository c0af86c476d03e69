#!/usr/bin/env bash
# Find (or install once) a redis-server binary and print its absolute path on stdout.
# All progress goes to stderr. The multi-node tests run two livekit-server nodes on one
# Redis, LiveKit's distributed mode.
#
# Exit codes: 0 ok, 2 usage error, 3 redis-server missing and it cannot be installed here,
# other = the install failed.
set -euo pipefail

readonly PACKAGE="redis-server" # Debian's package; its binary is /usr/bin/redis-server

usage() {
    cat <<USAGE
Usage: $(basename "$0") [--help]

Prints the absolute path of a redis-server binary: \$REDIS_SERVER when it names an
executable, else the one on PATH (or in /usr/bin, /usr/sbin, /usr/local/bin). When
there is none, installs Debian's '${PACKAGE}' package with apt-get (as root, or through
passwordless sudo), running 'apt-get update' first if the install fails for lack of
package lists. Concurrent callers are serialised with flock(1); only one install happens.
The package's own service is not needed: tests start redis-server themselves.

Options:
  -h, --help  show this help and exit

Exit status: 0 success, 2 usage error, 3 not installed and not installable here
(no apt-get, or neither root nor passwordless sudo), anything else: the install failed.
USAGE
}

log() { printf 'redis-server: %s\n' "$*" >&2; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        *) log "unknown argument: $1"; usage >&2; exit 2 ;;
    esac
done

find_binary() {
    if [[ -n "${REDIS_SERVER:-}" && -x "${REDIS_SERVER}" ]]; then
        printf '%s\n' "$(cd -- "$(dirname -- "$REDIS_SERVER")" && pwd -P)/$(basename -- "$REDIS_SERVER")"
        return 0
    fi
    local found
    if found="$(command -v redis-server 2>/dev/null)" && [[ -x "$found" ]]; then
        printf '%s\n' "$found"
        return 0
    fi
    for found in /usr/bin/redis-server /usr/sbin/redis-server /usr/local/bin/redis-server; do
        if [[ -x "$found" ]]; then
            printf '%s\n' "$found"
            return 0
        fi
    done
    return 1
}

# Fast path: already there (no lock, no apt).
if find_binary; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    log "redis-server not found and apt-get is not available to install it"
    exit 3
fi
if [[ "$(id -u)" -eq 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    log "redis-server not found; installing '${PACKAGE}' needs root or passwordless sudo"
    exit 3
fi

# Serialise concurrent installers (apt holds its own lock, but would fail rather than wait).
script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
repo_root="$(cd -- "$script_dir/.." && pwd -P)"
lock_dir="${LKSUP_CACHE_DIR:-$repo_root/.cache}/redis-server"
mkdir -p -- "$lock_dir"
exec 9>"$lock_dir/.lock"
if command -v flock >/dev/null 2>&1; then
    if ! flock -n 9; then
        log "another install is in progress; waiting for lock $lock_dir/.lock"
        flock 9
    fi
else
    log "flock(1) not found; installing without a lock"
fi

# Someone else may have installed it while we waited.
if find_binary; then
    exit 0
fi

apt_install() {
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "$PACKAGE" >&2
}

log "installing Debian's '${PACKAGE}' package with apt-get"
start=$SECONDS
if ! apt_install; then
    log "install failed; refreshing the package lists (apt-get update) and trying again"
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    apt_install
fi

if ! find_binary; then
    log "'${PACKAGE}' installed but no redis-server binary was found"
    exit 1
fi
log "installed in $((SECONDS - start))s"
