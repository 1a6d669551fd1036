#!/usr/bin/env bash
# Regenerate the PodResources gRPC stubs (api_pb2.py, api_pb2.pyi, api_pb2_grpc.py) from
# node-daemon/polca_node/podresources/api.proto with grpcio-tools.
#
# Usage: tools/gen-protos.sh [OUT_ROOT]
#   OUT_ROOT defaults to node-daemon (the checked-in stubs); the drift test passes a temp dir.
# The proto is compiled relative to node-daemon/, so the stubs import each other as
# polca_node.podresources.api_pb2 and the wire names stay those of package v1.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
OUT_ROOT="${1:-node-daemon}"
mkdir -p "$OUT_ROOT/polca_node/podresources"
"$PYTHON" -m grpc_tools.protoc \
    --proto_path=node-daemon \
    --python_out="$OUT_ROOT" \
    --pyi_out="$OUT_ROOT" \
    --grpc_python_out="$OUT_ROOT" \
    node-daemon/polca_node/podresources/api.proto
# The generated stub uses bare `Mapping` (mypy --strict: type-arg); the stubs are not ours to
# fix, so tell mypy to keep their types but not to report their errors.
STUB="$OUT_ROOT/polca_node/podresources/api_pb2.pyi"
{ echo "# mypy: ignore-errors"; cat "$STUB"; } > "$STUB.tmp" && mv "$STUB.tmp" "$STUB"
