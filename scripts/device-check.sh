#!/usr/bin/env bash
# Builds the device-check bundle and writes the one command to run on a GPU machine that has no .NET SDK.
#
#   scripts/device-check.sh [BUNDLE] [--tool-only]   # default BUNDLE: .device/check (ignored by git)
#
# --tool-only leaves out the server and run.sh (the test that runs the published tool here uses it).
# BUNDLE/bin holds self-contained linux-x64 single-file publishes of the tool (ecmt) and the server (ecmt-server),
# built without libtorch (-p:EcmtDeviceTool=true: bench reports its ANN side as unavailable), the
# shipped model (models/fmnist-vit) and the first 300 Fashion-MNIST test images (check-images/, gzipped IDX, cut
# from Debian's dataset-fashion-mnist; never committed). BUNDLE/run.sh is the command for the device machine: it
# writes one JSON file per result under $OUT (default BUNDLE/out). The script prints the bundle's size: it must stay
# well under the 64 MiB that may travel to a device machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=${1:-.device/check}
parts=${2:-all}
images=300
rm -rf "$bundle"
mkdir -p "$bundle/bin/models" "$bundle/bin/check-images"
publish=(-c Release -r linux-x64 --self-contained true -p:PublishSingleFile=true -p:EnableCompressionInSingleFile=true
         -p:IncludeNativeLibrariesForSelfExtract=true -p:EcmtDeviceTool=true -p:GenerateDocumentationFile=false
         # Trim the framework only (TrimMode=partial: the app, ILGPU and the other libraries stay whole, so reflection
         # in them keeps working; reflection-based JSON stays on); untrimmed, the two publishes weigh about 100 MB. The
         # trimmer's analysis warnings concern the libraries' reflection, which partial trimming leaves alone.
         -p:PublishTrimmed=true -p:TrimMode=partial -p:SuppressTrimAnalysisWarnings=true -p:ILLinkTreatWarningsAsErrors=false
         -p:JsonSerializerIsReflectionEnabledByDefault=true
         # Build outputs of their own (beside the bundle), so that a publish never rewrites the bin/obj folders that
         # the ordinary build and the tests use.
         --artifacts-path "$bundle.build" --nologo --verbosity quiet)
dotnet publish src/Cli "${publish[@]}" -o "$bundle/bin"
[ "$parts" = --tool-only ] || dotnet publish src/Server "${publish[@]}" -o "$bundle/bin"
rm -f "$bundle"/bin/*.pdb "$bundle"/bin/*.xml
mkdir -p "$bundle/bin/models/fmnist-vit"
cp models/fmnist-vit/{config.json,conversion.json,model.safetensors,thresholds.safetensors} "$bundle/bin/models/fmnist-vit/"

# The first $images test images and labels, in the IDX format Debian installs (the tool reads them like the dataset).
dataset=${ECMT_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
python3 - "$dataset" "$bundle/bin/check-images" "$images" <<'PY'
import gzip, struct, sys
source, target, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
for name, item in (("t10k-images-idx3-ubyte.gz", 28 * 28), ("t10k-labels-idx1-ubyte.gz", 1)):
    data = gzip.open(f"{source}/{name}").read()
    rank = data[3]
    dims = list(struct.unpack(f">{rank}I", data[4:4 + 4 * rank]))
    body = data[4 + 4 * rank:][:count * item]
    dims[0] = count
    with gzip.open(f"{target}/{name}", "wb") as f:
        f.write(data[:4] + struct.pack(f">{rank}I", *dims) + body)
PY

if [ "$parts" = --tool-only ]; then du -sh "$bundle"; exit 0; fi
cat > "$bundle/run.sh" <<'RUN'
#!/usr/bin/env bash
# On the device machine, from anywhere: bash BUNDLE/run.sh. Writes one JSON file per result under $OUT (default
# BUNDLE/out), with each command's log beside it; a failing command is recorded and the rest still run.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$here/bin
out=${OUT:-$here/out}
mkdir -p "$out"
export ECMT_FASHION_MNIST_DIR=$bin/check-images DOTNET_NOLOGO=1
status=0
step() { # name timeout command…
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$out/$name.json" 2> "$out/$name.log"
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - start)) s"
  [ $rc -eq 0 ] || status=1
}
(nvidia-smi || true) > "$out/nvidia-smi.txt" 2>&1
step check-backend-cuda 240 "$bin/ecmt" check-backend --backend cuda
models=(vit-s16-random)
if "$bin/ecmt" bench --help | grep -q vit-b16-random; then models+=(vit-b16-random); else
  echo '{"skipped":"this build of ecmt bench does not know vit-b16-random"}' > "$out/bench-vit-b16-random.json"; fi
for model in "${models[@]}"; do
  for batch in 1 8 64; do
    step "bench-$model-b$batch" 150 "$bin/ecmt" bench --model "$model" --backend cuda --batch "$batch" --steps 6 --repeats 1
  done
done
"$bin/ecmt-server" --backend cuda --port 50151 > "$out/server.log" 2>&1 &
server=$!
for _ in $(seq 120); do grep -q "ready in" "$out/server.log" && break; sleep 1; done
for streams in 1 32 256; do
  step "bench-server-c$streams" 60 "$bin/ecmt" bench-server --server http://localhost:50151 --concurrency "$streams" --duration 10 --warmup 3
done
kill "$server"; wait "$server" 2>/dev/null
exit $status
RUN
chmod +x "$bundle/run.sh"
du -sh "$bundle"
ls -l "$bundle/bin"
echo "on the device machine: bash $bundle/run.sh   (results: \$OUT/*.json)"
