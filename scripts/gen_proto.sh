#!/usr/bin/env bash
# Regenerate supervisor/lksup/_pb from proto/*.proto (protoc from grpcio-tools, with .pyi stubs).
# Usage: scripts/gen_proto.sh [OUT_DIR]   (default: supervisor/lksup/_pb)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out="${1:-$root/supervisor/lksup/_pb}"
python="${PYTHON:-$root/.venv/bin/python}"
mkdir -p "$out"
"$python" -m grpc_tools.protoc -I"$root/proto" --python_out="$out" --pyi_out="$out" "$root"/proto/*.proto
[ -f "$out/__init__.py" ] || printf '"""Generated protobuf modules (scripts/gen_proto.sh); do not edit."""\n' >"$out/__init__.py"
