#!/usr/bin/env bash
# CI check of the gRPC contract from another language: generates the Python client from protos/, starts the real
# server on a model (the shipped models/fmnist-vit when present, else a small synthetic one), runs
# examples/python/smoke_test.py against it (streaming, early stops, cancel, deadline, bad input), then stops the
# server with SIGTERM and checks that it drained and exited cleanly. Exits non-zero on any failure.
#
# Needs: the .NET SDK; Debian's python3-grpcio python3-protobuf protobuf-compiler protobuf-compiler-grpc.
# ECMT_BACKEND chooses the backend (default here: reference, which every build has).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
python=/usr/bin/python3   # Debian's python: the one that sees python3-grpcio (not a pyenv python on PATH)
work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then kill -KILL "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "python-client-test: $*" >&2; [[ -f "$work/server.log" ]] && { echo "--- server log" >&2; tail -40 "$work/server.log" >&2; }; exit 1; }

"$python" -c 'import grpc, google.protobuf' 2>/dev/null \
  || fail "python3-grpcio/python3-protobuf missing: apt-get install python3-grpcio python3-protobuf protobuf-compiler protobuf-compiler-grpc"
examples/python/generate.sh

echo "== building the server"
dotnet build src/Server -c Release --nologo -v q -clp:ErrorsOnly >/dev/null || fail "server build failed"
server="src/Server/bin/Release/net10.0/ecmt-server.dll"

if [[ -f models/fmnist-vit/conversion.json ]]; then
  models="models/fmnist-vit"; model="fmnist-vit"
else
  echo "== models/fmnist-vit is absent: making a small synthetic converted model"
  dotnet build src/Cli -c Release --nologo -v q -clp:ErrorsOnly >/dev/null || fail "cli build failed"
  dotnet src/Cli/bin/Release/net10.0/ecmt.dll synth-model --out "$work/models/synthetic" >/dev/null
  models="$work/models"; model="synthetic"
fi
shopt -s nullglob
images=(samples/*.png)
if (( ${#images[@]} == 0 )) && [[ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz || -n "${ECMT_FASHION_MNIST_DIR:-}" ]]; then
  [[ -f src/Cli/bin/Release/net10.0/ecmt.dll ]] || dotnet build src/Cli -c Release --nologo -v q -clp:ErrorsOnly >/dev/null
  dotnet src/Cli/bin/Release/net10.0/ecmt.dll samples --out "$work/samples" >/dev/null
  images=("$work"/samples/*.png)
fi
images=("${images[@]:0:3}")

read -r port metrics_port < <("$python" -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')

echo "== starting the server: model $model, backend ${ECMT_BACKEND:-reference}, port $port"
# The step limit is raised through the environment (Ecmt__Limits__MaxSteps) so the cancel and deadline checks
# have streams long enough to interrupt.
ECMT_BACKEND="${ECMT_BACKEND:-reference}" Ecmt__Limits__MaxSteps=100000 Ecmt__Shutdown__DrainDelaySeconds=0 \
  dotnet "$server" --models "$models" --address 127.0.0.1 --port "$port" --metrics-port "$metrics_port" >"$work/server.log" 2>&1 &
server_pid=$!

for _ in $(seq 1 120); do
  kill -0 "$server_pid" 2>/dev/null || fail "the server exited during startup"
  "$python" examples/python/ecmt_client.py health --address "127.0.0.1:$port" >/dev/null 2>&1 && break
  sleep 0.5
done

echo "== python client checks"
"$python" examples/python/smoke_test.py --address "127.0.0.1:$port" --model "$model" \
  --metrics "http://127.0.0.1:$metrics_port/metrics" "${images[@]}" || fail "python client checks failed"

echo "== graceful shutdown (SIGTERM)"
kill -TERM "$server_pid"
for _ in $(seq 1 60); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.5; done
kill -0 "$server_pid" 2>/dev/null && fail "the server did not stop within 30 s of SIGTERM"
wait "$server_pid" && status=0 || status=$?
server_pid=""
(( status == 0 )) || fail "the server exited with status $status after SIGTERM"
grep -q "health is NOT_SERVING" "$work/server.log" || fail "the server did not report NOT_SERVING at shutdown"
echo "python-client-test: passed"
