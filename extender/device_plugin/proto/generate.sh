#!/bin/sh
# Regenerate the Python bindings of the kubelet's device plugin (v1beta1) and pod resources (v1)
# APIs from the .proto files beside this script: messages (*_pb2.py), gRPC stubs (*_pb2_grpc.py)
# and their type stubs (*.pyi, by mypy-protobuf) so that `mypy --strict` checks their callers.
# Usage: generate.sh [OUTPUT_ROOT]   (default: the repository root, i.e. in place)
# Needs grpcio-tools and mypy-protobuf (the `test` extra).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
out=${1:-$root}
py=${PYTHON:-python3}
mkdir -p "$out/extender/device_plugin/proto"
cd "$root"
# -I . makes the generated imports absolute (extender.device_plugin.proto.X_pb2).
"$py" -m grpc_tools.protoc -I . \
  --python_out="$out" --grpc_python_out="$out" \
  --mypy_out="$out" --mypy_grpc_out="$out" \
  extender/device_plugin/proto/deviceplugin_v1beta1.proto \
  extender/device_plugin/proto/podresources_v1.proto
