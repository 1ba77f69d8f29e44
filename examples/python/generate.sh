#!/usr/bin/env bash
# Generates the Python gRPC stubs for gitcap.v1 from the repository's proto/ directory.
#
#   examples/python/generate.sh [OUT_DIR]      (default: examples/python/gen, git-ignored)
#
# Needs grpcio-tools (pip install -r examples/python/requirements.txt). The Python interpreter is
# $PYTHON, else python3. The stubs land in OUT_DIR/gitcap/v1/gitcap_pb2{,_grpc}.py; caption.py
# finds them with --stubs OUT_DIR (or in the default directory).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
proto="$here/../../proto"
out="${1:-$here/gen}"
python="${PYTHON:-python3}"

mkdir -p "$out"
"$python" -m grpc_tools.protoc \
    --proto_path="$proto" \
    --python_out="$out" \
    --grpc_python_out="$out" \
    "$proto/gitcap/v1/gitcap.proto"
echo "generated gitcap.v1 stubs in $out" >&2
