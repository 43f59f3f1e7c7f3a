#!/usr/bin/env bash
# Generates the Python gRPC code from protos/ (not committed): ecmt.v1 into examples/python/ecmt/, the Open Inference
# Protocol (package inference) into examples/python/inference/.
# Needs Debian's protobuf-compiler and protobuf-compiler-grpc (grpc_python_plugin):
#   apt-get install python3-grpcio python3-protobuf protobuf-compiler protobuf-compiler-grpc
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
plugin="$(command -v grpc_python_plugin || true)"
if [[ -z "$plugin" ]] || ! command -v protoc >/dev/null; then
  echo "generate.sh: protoc and grpc_python_plugin are needed: apt-get install protobuf-compiler protobuf-compiler-grpc" >&2
  exit 2
fi
rm -rf "$here/ecmt" "$here/inference"
protoc -I "$root/protos" --python_out="$here" --grpc_out="$here" --plugin=protoc-gen-grpc="$plugin" \
  "$root/protos/ecmt/v1/classifier.proto" "$root/protos/inference/open_inference_grpc.proto"
echo "generated $(cd "$here" && find ecmt inference -name '*.py' | sort | tr '\n' ' ')"
