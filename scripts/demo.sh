#!/usr/bin/env bash
# The README's first command: starts the server on the default model (models/fmnist-vit) and shows the Python
# client streaming per-step predictions for sample images, first running every step, then letting the server stop
# each image as soon as it is confident; then the same over REST, one JSON line per step (curl).
#
#   scripts/demo.sh                 # default model, backend auto (ECMT_BACKEND overrides), src/Server/Page/samples
#   scripts/demo.sh --steps 16 --min-confidence 0.95
#   scripts/demo.sh --page          # then keep serving the live page until Ctrl+C (the URL is printed)
#   ECMT_BACKEND=reference scripts/demo.sh
#   ECMT_DEMO_SYNTHETIC=1 scripts/demo.sh   # no trained model at hand: a random synthetic one (meaningless predictions)
#
# Needs the .NET SDK and Debian's python3-grpcio python3-protobuf protobuf-compiler protobuf-compiler-grpc (and curl
# for the REST part).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
./scripts/setup.sh
python=/usr/bin/python3
steps=12 confidence=0.9 page=""
while (( $# )); do
  case "$1" in
    --steps) steps="$2"; shift 2 ;;
    --min-confidence) confidence="$2"; shift 2 ;;
    --page) page=1; shift ;;
    *) echo "usage: scripts/demo.sh [--steps N] [--min-confidence P] [--page]" >&2; exit 2 ;;
  esac
done
work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then kill -TERM "$server_pid"; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

"$python" -c 'import grpc, google.protobuf' 2>/dev/null || {
  echo "demo: install the Python gRPC client's packages: apt-get install python3-grpcio python3-protobuf protobuf-compiler protobuf-compiler-grpc" >&2; exit 2; }
examples/python/generate.sh >/dev/null
echo "building the server and the ecmt tool…"
dotnet build src/Server -c Release --nologo -v q -clp:ErrorsOnly >/dev/null
ecmt() { dotnet src/Cli/bin/Release/net10.0/ecmt.dll "$@"; }

models_args=()
if [[ -n "${ECMT_DEMO_SYNTHETIC:-}" ]]; then
  dotnet build src/Cli -c Release --nologo -v q -clp:ErrorsOnly >/dev/null
  ecmt synth-model --out "$work/models/synthetic" >/dev/null
  models_args=(--models "$work/models/synthetic")
elif [[ ! -f models/fmnist-vit/conversion.json && -z "${ECMT_MODEL_DIR:-}" ]]; then
  echo "demo: the default model models/fmnist-vit is not here yet; set ECMT_MODEL_DIR, or ECMT_DEMO_SYNTHETIC=1 for a random model" >&2
  exit 2
fi

# The sample images the server's page shows (Fashion-MNIST test images, written by `ecmt samples`).
images=(src/Server/Page/samples/*.png)

read -r port http_port < <("$python" -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
echo "starting ecmt-server: gRPC on 127.0.0.1:$port, REST and the live page on http://127.0.0.1:$http_port/ (backend ${ECMT_BACKEND:-auto})…"
dotnet src/Server/bin/Release/net10.0/ecmt-server.dll "${models_args[@]}" --address 127.0.0.1 --port "$port" --http-port "$http_port" --metrics-port 0 \
  >"$work/server.log" 2>&1 &
server_pid=$!
client=(examples/python/ecmt_client.py)
for _ in $(seq 1 240); do
  if ! kill -0 "$server_pid" 2>/dev/null; then echo "demo: the server did not start:" >&2; cat "$work/server.log" >&2; server_pid=""; exit 1; fi
  "$python" "${client[@]}" health --address "127.0.0.1:$port" >/dev/null 2>&1 && break
  sleep 0.5
done

echo
"$python" "${client[@]}" list --address "127.0.0.1:$port"
echo
echo "== every step: the prediction after t time steps of the spiking model"
"$python" "${client[@]}" classify "${images[@]:0:2}" --address "127.0.0.1:$port" --steps "$steps" --top-k 3
echo
echo "== early exit: the server stops each image once its top-1 probability reaches $confidence"
"$python" "${client[@]}" classify "${images[@]}" --address "127.0.0.1:$port" --steps "$steps" --min-confidence "$confidence" --top-k 1 \
  | grep -v '  t='

if command -v curl >/dev/null 2>&1; then
  model="$(curl -s "http://127.0.0.1:$http_port/ecmt/v1/models" | "$python" -c 'import json, sys; print(json.load(sys.stdin)["models"][0]["name"])')"
  echo
  echo "== REST: POST /v2/models/$model/infer_stream, one JSON line per step (Open Inference Protocol responses)"
  printf '{"parameters": {"max_steps": 4}, "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%s"]}], "outputs": [{"name": "step"}, {"name": "probabilities", "parameters": {"classification": 1}}]}' \
    "$(base64 -w0 "${images[0]}")" | curl -sN "http://127.0.0.1:$http_port/v2/models/$model/infer_stream" -d @-
fi

if [[ -n "$page" ]]; then
  echo
  echo "the live page: http://127.0.0.1:$http_port/  (Ctrl+C stops the server)"
  wait "$server_pid"
fi
