#!/usr/bin/env bash
# Regenerate the gRPC stubs (api_pb2.py, api_pb2.pyi, api_pb2_grpc.py) with grpcio-tools:
#   - kubelet's PodResources API: node-daemon/polca_node/podresources/api.proto (the daemon's);
#   - kubelet's device-plugin API: testbed/polca_testbed/deviceplugin/api.proto (the fake
#     NVIDIA device plugin's, test-only).
#
# Usage: tools/gen-protos.sh [NODE_OUT] [TESTBED_OUT]
#   They default to node-daemon and testbed (the checked-in stubs); the drift test passes temp
#   dirs. Each proto is compiled relative to its package root, so the stubs import each other
#   as polca_node.podresources.api_pb2 / polca_testbed.deviceplugin.api_pb2 and the wire names
#   stay those of kubelet's packages (v1, v1beta1).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"

generate() { # source-root proto out-root
  local root="$1" proto="$2" out="$3"
  mkdir -p "$out/$(dirname "$proto")"
  "$PYTHON" -m grpc_tools.protoc --proto_path="$root" --python_out="$out" --pyi_out="$out" \
      --grpc_python_out="$out" "$root/$proto"
  # The generated stub uses bare `Mapping` (mypy --strict: type-arg); the stubs are not ours to
  # fix, so tell mypy to keep their types but not to report their errors.
  local stub="$out/${proto%.proto}_pb2.pyi"
  { echo "# mypy: ignore-errors"; cat "$stub"; } > "$stub.tmp" && mv "$stub.tmp" "$stub"
}

generate node-daemon polca_node/podresources/api.proto "${1:-node-daemon}"
generate testbed polca_testbed/deviceplugin/api.proto "${2:-testbed}"
