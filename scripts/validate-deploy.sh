#!/usr/bin/env bash
# Check the Kubernetes manifests in deploy/kubernetes without a cluster, with the Go checker in
# deploy/validate (kustomize build in process, strict decoding into the k8s.io/api types, the
# checks lksup's pod needs). The checker is built once per change of its sources.
#
# Exit codes: 0 ok, 1 a manifest has problems, 2 usage error, 3 Go toolchain not found,
# other = the build failed.
set -euo pipefail

usage() {
    cat <<USAGE
Usage: $(basename "$0") [-o DIR] [KUSTOMIZATION...]
       $(basename "$0") --go-test

Builds the checker in deploy/validate (once per change of its sources) into
\${LKSUP_CACHE_DIR:-<repo>/.cache}/validate-deploy/ and runs it on each KUSTOMIZATION
directory (default: deploy/kubernetes/base and deploy/kubernetes/overlays/example).
With -o, each build is also written to DIR/<base name>.yaml.

Options:
  -o DIR      write each kustomize build to DIR
  --go-test   run the checker's own Go tests (go test ./... in deploy/validate) instead
  -h, --help  show this help and exit

Exit status: 0 every manifest passes, 1 problems found, 2 usage error,
3 Go toolchain not found, anything else: the build failed.
USAGE
}

log() { printf 'validate-deploy: %s\n' "$*" >&2; }

out=""
go_test=0
dirs=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        -o) [[ $# -ge 2 ]] || { log "-o needs a directory"; exit 2; }; out="$2"; shift 2 ;;
        --go-test) go_test=1; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) log "unknown option: $1"; usage >&2; exit 2 ;;
        *) dirs+=("$1"); shift ;;
    esac
done

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
repo_root="$(cd -- "$script_dir/.." && pwd -P)"
module="$repo_root/deploy/validate"
cd -- "$repo_root"
[[ ${#dirs[@]} -gt 0 ]] || dirs=(deploy/kubernetes/base deploy/kubernetes/overlays/example)

if ! command -v go >/dev/null 2>&1; then
    log "Go toolchain not found; install Go >= 1.26 to check the Kubernetes manifests"
    exit 3
fi

if [[ $go_test -eq 1 ]]; then
    cd -- "$module"
    exec go test ./...
fi

# The cache key: every source of the checker (go.mod and go.sum pin every dependency).
key="$(cd -- "$module" && cat go.mod go.sum $(ls -- *.go | grep -v '_test\.go$') | sha256sum | cut -c1-16)"
cache_root="${LKSUP_CACHE_DIR:-$repo_root/.cache}/validate-deploy"
mkdir -p -- "$cache_root"
cache_root="$(cd -- "$cache_root" && pwd -P)"
bin="$cache_root/$key/validate-deploy"

if [[ ! -x "$bin" ]]; then
    exec 9>"$cache_root/.lock"
    if command -v flock >/dev/null 2>&1; then
        flock 9 # concurrent callers: one build
    fi
    if [[ ! -x "$bin" ]]; then
        log "building the checker with $(go version)"
        tmp="$(mktemp -d "$cache_root/.build.XXXXXX")"
        trap 'rm -rf -- "$tmp"' EXIT
        (cd -- "$module" && CGO_ENABLED=0 go build -trimpath -buildvcs=false -o "$tmp/validate-deploy" .) >&2
        # keep only the current build
        find "$cache_root" -mindepth 1 -maxdepth 1 -type d ! -name '.*' -exec rm -rf -- {} +
        mkdir -p -- "$cache_root/$key"
        mv -f -- "$tmp/validate-deploy" "$bin"
        rm -rf -- "$tmp"
        trap - EXIT
    fi
fi

if [[ -n "$out" ]]; then
    mkdir -p -- "$out"
    exec "$bin" -o "$out" "${dirs[@]}"
fi
exec "$bin" "${dirs[@]}"
