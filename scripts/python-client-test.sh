#!/usr/bin/env bash
# CI check of the contracts from another language: generates the Python clients from protos/, starts the real
# server on a model (the shipped models/fmnist-vit when present, else a small synthetic one), runs
# examples/python/smoke_test.py against it (ecmt.v1: streaming, early stops, cancel, deadline, bad input) and
# examples/python/oip_smoke_test.py (the Open Inference Protocol over gRPC and REST, the per-step stream, errors),
# streams with curl, then stops the server with SIGTERM and checks that it drained and exited cleanly. Exits non-zero
# on any failure.
#
# Needs: the .NET SDK; Debian's python3-grpcio python3-protobuf protobuf-compiler protobuf-compiler-grpc (curl, when
# present, for the curl check).
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
# The sample images the server's page shows (Fashion-MNIST test images, written by `ecmt samples`).
images=(src/Server/Page/samples/*.png)
images=("${images[@]:0:3}")

read -r port http_port metrics_port < <("$python" -c 'import socket
s=[socket.socket() for _ in range(3)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')

echo "== starting the server: model $model, backend ${ECMT_BACKEND:-reference}, port $port"
# The step limit is raised through the environment (Ecmt__Limits__MaxSteps) so the cancel and deadline checks
# have streams long enough to interrupt.
ECMT_BACKEND="${ECMT_BACKEND:-reference}" Ecmt__Limits__MaxSteps=100000 Ecmt__Shutdown__DrainDelaySeconds=0 \
  dotnet "$server" --models "$models" --address 127.0.0.1 --port "$port" --http-port "$http_port" --metrics-port "$metrics_port" >"$work/server.log" 2>&1 &
server_pid=$!

for _ in $(seq 1 120); do
  kill -0 "$server_pid" 2>/dev/null || fail "the server exited during startup"
  "$python" examples/python/ecmt_client.py health --address "127.0.0.1:$port" >/dev/null 2>&1 && break
  sleep 0.5
done

echo "== python client checks"
"$python" examples/python/smoke_test.py --address "127.0.0.1:$port" --model "$model" \
  --metrics "http://127.0.0.1:$metrics_port/metrics" "${images[@]}" || fail "python client checks failed"

echo "== Open Inference Protocol checks (gRPC and REST)"
"$python" examples/python/oip_smoke_test.py --address "127.0.0.1:$port" --http "http://127.0.0.1:$http_port" --model "$model" \
  --metrics "http://127.0.0.1:$metrics_port/metrics" "${images[@]}" || fail "Open Inference Protocol checks failed"

if command -v curl >/dev/null 2>&1; then
  echo "== curl: the per-step stream"
  printf '{"parameters": {"max_steps": 5}, "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%s"]}]}' \
    "$(base64 -w0 "${images[0]:-/dev/null}")" >"$work/request.json"
  curl -sS -N --fail-with-body "http://127.0.0.1:$http_port/v2/models/$model/infer_stream" -d @"$work/request.json" >"$work/stream.ndjson" \
    || fail "curl stream failed: $(cat "$work/stream.ndjson")"
  lines=$(grep -c '"outputs"' "$work/stream.ndjson")
  (( lines == 5 )) || fail "curl stream: $lines lines for 5 steps"
  tail -1 "$work/stream.ndjson" | grep -q '"triton_final_response":true' || fail "curl stream: the last line is not final"
  status=$(curl -sS -o "$work/error.json" -w '%{http_code}' "http://127.0.0.1:$http_port/v2/models/no-such-model/infer" -d @"$work/request.json")
  [[ "$status" == 404 ]] && grep -q '"error"' "$work/error.json" || fail "curl: unknown model answered $status $(cat "$work/error.json")"
  echo "curl: 5 lines, the last final; unknown model 404 {\"error\": ...}"
fi

echo "== graceful shutdown (SIGTERM)"
kill -TERM "$server_pid"
for _ in $(seq 1 60); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.5; done
kill -0 "$server_pid" 2>/dev/null && fail "the server did not stop within 30 s of SIGTERM"
wait "$server_pid" && status=0 || status=$?
server_pid=""
(( status == 0 )) || fail "the server exited with status $status after SIGTERM"
grep -q "health is NOT_SERVING" "$work/server.log" || fail "the server did not report NOT_SERVING at shutdown"

echo "== access control: API keys from an access file (hashes only), per-model authorization, a rate limit"
sha() { printf %s "$1" | sha256sum | cut -c1-64; }
cat >"$work/access.json" <<EOF
{"callers": [
  {"name": "ci", "key_sha256": "$(sha ci-key)", "models": ["$model"]},
  {"name": "other", "key_sha256": "$(sha other-key)", "models": ["not-$model"]},
  {"name": "slow", "key_sha256": "$(sha slow-key)", "models": ["*"], "requests_per_second": 1}
]}
EOF
read -r port http_port < <("$python" -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
ECMT_BACKEND="${ECMT_BACKEND:-reference}" Ecmt__Access__File="$work/access.json" \
  dotnet "$server" --models "$models" --address 127.0.0.1 --port "$port" --http-port "$http_port" --metrics-port 0 >"$work/server.log" 2>&1 &
server_pid=$!
client() { local verb="$1"; shift; "$python" examples/python/ecmt_client.py "$verb" --address "127.0.0.1:$port" "$@"; }
for _ in $(seq 1 120); do
  kill -0 "$server_pid" 2>/dev/null || fail "the server with access control exited during startup"
  client health >/dev/null 2>&1 && break   # health is open to probes: no key
  sleep 0.5
done
expect_code() {  # expect_code CODE ARGS...: the client fails with that status
  local want="$1"; shift
  local out
  out=$(client "$@" 2>&1) && fail "access: '$*' succeeded, expected $want"
  grep -q "$want" <<<"$out" || fail "access: '$*' answered: $out (expected $want)"
}
expect_code UNAUTHENTICATED list
expect_code UNAUTHENTICATED list --api-key wrong-key
expect_code PERMISSION_DENIED classify --api-key other-key --model "$model" --steps 2 "${images[0]}"
[[ "$(client list --api-key ci-key --json | wc -l)" == 1 ]] || fail "access: ListModels shows more than the caller's model"
client classify --api-key ci-key --model "$model" --steps 2 "${images[0]}" >/dev/null || fail "access: the right key was refused"
ECMT_API_KEY=ci-key client classify --model "$model" --steps 2 "${images[0]}" >/dev/null || fail "access: ECMT_API_KEY was not used"
expect_code RESOURCE_EXHAUSTED classify --api-key slow-key --model "$model" --steps 1 "${images[@]}"
if command -v curl >/dev/null 2>&1; then
  status=$(curl -sS -o "$work/error.json" -w '%{http_code}' "http://127.0.0.1:$http_port/v2/models/$model/infer" -d @"$work/request.json")
  [[ "$status" == 401 ]] && grep -q '"error"' "$work/error.json" || fail "access: REST without a key answered $status"
  status=$(curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer ci-key" "http://127.0.0.1:$http_port/v2/models/$model/infer" -d @"$work/request.json")
  [[ "$status" == 200 ]] || fail "access: REST with the key answered $status"
fi
echo "access: no key and a wrong key UNAUTHENTICATED, another model PERMISSION_DENIED, over the rate RESOURCE_EXHAUSTED, REST 401/200"
kill -TERM "$server_pid"
wait "$server_pid" || fail "the server with access control exited with status $? after SIGTERM"
server_pid=""
echo "python-client-test: passed"
