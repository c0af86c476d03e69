#!/usr/bin/env bash
# Build (once) the real LiveKit server from its Go module and print the
# absolute path of the binary on stdout. All progress goes to stderr.
#
# Exit codes: 0 ok, 2 usage error, 3 Go toolchain not found, other = build failure.
set -euo pipefail

readonly LIVEKIT_VERSION="v1.13.5" # later tags carry `replace` directives that break `go install`
readonly LIVEKIT_PKG="github.com/livekit/livekit-server/cmd/server"
readonly BIN_NAME="server"

usage() {
    cat <<USAGE
Usage: $(basename "$0") [--print-version | --help]

Builds the LiveKit server ${LIVEKIT_VERSION} once with
  CGO_ENABLED=0 go install ${LIVEKIT_PKG}@${LIVEKIT_VERSION}
into \${LKSUP_CACHE_DIR:-<repo>/.cache}/livekit-server/${LIVEKIT_VERSION}/ and prints
the binary's absolute path on stdout. Subsequent calls reuse the cached binary.
Concurrent callers are serialised with flock(1); only one build happens.

Options:
  --print-version  print the pinned LiveKit server version and exit
  -h, --help       show this help and exit

Exit status: 0 success, 2 usage error, 3 Go toolchain not found,
anything else: the build failed.
USAGE
}

log() { printf 'livekit-server: %s\n' "$*" >&2; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --print-version) printf '%s\n' "$LIVEKIT_VERSION"; exit 0 ;;
        -h|--help) usage; exit 0 ;;
        *) log "unknown argument: $1"; usage >&2; exit 2 ;;
    esac
done

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
repo_root="$(cd -- "$script_dir/.." && pwd -P)"
cache_root="${LKSUP_CACHE_DIR:-$repo_root/.cache}"
cache_dir="$cache_root/livekit-server/$LIVEKIT_VERSION"

# Fast path: already built (no Go needed).
if [[ -x "$cache_dir/$BIN_NAME" ]]; then
    printf '%s\n' "$(cd -- "$cache_dir" && pwd -P)/$BIN_NAME"
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    log "Go toolchain not found; install Go >= 1.26 to build it"
    exit 3
fi

mkdir -p -- "$cache_dir"
cache_dir="$(cd -- "$cache_dir" && pwd -P)" # absolute, even if LKSUP_CACHE_DIR is relative
bin="$cache_dir/$BIN_NAME"

# Serialise concurrent builders (e.g. parallel test workers).
exec 9>"$cache_dir/.lock"
if command -v flock >/dev/null 2>&1; then
    if ! flock -n 9; then
        log "another build is in progress; waiting for lock $cache_dir/.lock"
        flock 9
    fi
else
    log "flock(1) not found; building without a lock (atomic rename keeps it safe)"
fi

# Someone else may have finished the build while we waited.
if [[ -x "$bin" ]]; then
    printf '%s\n' "$bin"
    exit 0
fi

tmp_dir="$(mktemp -d "$cache_dir/.build.XXXXXX")"
trap 'rm -rf -- "$tmp_dir"' EXIT

log "building ${LIVEKIT_PKG}@${LIVEKIT_VERSION} with $(go version) (may take several minutes)"
start=$SECONDS
# Go's module/build caches stay at their defaults (GOPATH/GOCACHE); GOTOOLCHAIN is
# left to the environment so `auto` can fetch a newer toolchain if go.mod needs one.
CGO_ENABLED=0 GOBIN="$tmp_dir" go install "${LIVEKIT_PKG}@${LIVEKIT_VERSION}" >&2

if [[ ! -x "$tmp_dir/$BIN_NAME" ]]; then
    log "build finished but $tmp_dir/$BIN_NAME was not produced"
    exit 1
fi
mv -f -- "$tmp_dir/$BIN_NAME" "$bin" # same filesystem: atomic rename
log "built $bin in $((SECONDS - start))s"

printf '%s\n' "$bin"
