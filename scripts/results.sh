#!/usr/bin/env bash
# Regenerates the measurements behind docs/results.md: every run writes its JSON to docs/results/, then
# scripts/results_tables.py turns them into the tables and `ecmt plot` draws the charts. Takes about an hour on 2
# quiet cores (fastcpu backend; the ablation runs on the reference backend).
#
#   scripts/results.sh              # everything
#   scripts/results.sh validation   # only the runs that choose the conversion (then: ecmt convert with the best)
#   scripts/results.sh ablation     # only the ablation of the first steps (validation images)
#   scripts/results.sh test         # only the test-set runs and the charts
#   scripts/results.sh eva          # only the EVA-layout model's test-set run
#   scripts/results.sh tables       # only re-render the tables (and charts) from the JSON already there
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/results
mkdir -p "$out"
ecmt() { dotnet src/Cli/bin/Release/net10.0/ecmt.dll "$@"; }

stage="${1:-all}"
if [[ "$stage" != "tables" ]]; then
  ./scripts/setup.sh
  dotnet build src/Cli -c Release --nologo -v q -clp:ErrorsOnly
fi
backend="${ECMT_BACKEND:-fastcpu}"
calibrated_places=(fc_qkv q k v fc_out fc1)
levels() { local j="$1"; shift; for p in "$@"; do printf '%s=%s ' "$p" "$j"; done; }
# The paper's neuron: half-base firing offsets, the calibrated quantile as the lowest level.
paper=(--rounding half-base --quantile-levels $(levels 0 "${calibrated_places[@]}" s fc2))

if [[ "$stage" == all || "$stage" == validation ]]; then
  # Choosing the conversion on the 2,500 validation images (never the test set). The paper's neuron with its presets,
  # granularities and quantiles; then nearest-level firing and the quantile as the value of level j.
  for preset in reference calibrated; do
    for thresholds in per-tensor per-channel; do
      for q in 0.99 0.999; do
        ecmt eval --split validation --steps 8 --preset "$preset" --thresholds "$thresholds" --quantile "$q" "${paper[@]}" \
          --backend "$backend" > "$out/validation-$preset-$thresholds-q$q.json"
      done
    done
  done
  for rounding in half-base nearest; do
    for j in 0 1 2 3; do
      [[ "$rounding" == half-base && "$j" == 0 ]] && continue   # the paper's reference per-channel run above
      ecmt eval --split validation --steps 8 --preset reference --thresholds per-channel --quantile 0.99 --rounding "$rounding" \
        --quantile-levels $(levels "$j" "${calibrated_places[@]}") --backend "$backend" > "$out/validation-$rounding-level$j.json"
    done
  done
  ecmt eval --split validation --steps 8 --preset calibrated --thresholds per-channel --quantile 0.99 --rounding nearest \
    --quantile-levels $(levels 2 "${calibrated_places[@]}" s fc2) --backend "$backend" > "$out/validation-nearest-level2-calibrated.json"
fi
if [[ "$stage" == all || "$stage" == ablation ]]; then
  # What limits the first steps: one place at a time made exact (ecmt ablate --help), on the first validation images,
  # for the paper's neuron and for the shipped conversion.
  n="${ECMT_ABLATION_IMAGES:-1000}"
  ecmt ablate --steps 4 --limit "$n" --preset reference --thresholds per-channel "${paper[@]}" > "$out/ablation-paper.json"
  ecmt ablate --steps 4 --limit "$n" > "$out/ablation-shipped.json"
fi
if [[ "$stage" == all || "$stage" == test ]]; then
  # The test set with the shipped conversion (eval's defaults): T = 32 gives every T <= 32 at once; the early-exit
  # studies come from the same run, two families fixed in advance: the gate alone at thresholds g, and the model's
  # recommended policy with at least m steps (m = 2..8); and calibrated confidence p combined with a stable top-1 for k
  # steps. The model's recommended policy and the oracle are always reported.
  gates=(0.5 0.6 0.7 0.8 0.85 0.9 0.93 0.95 0.97 0.98 0.99 0.995 0.998 0.999)
  recommended="$(/usr/bin/python3 -c 'import json; p=json.load(open("models/fmnist-vit/conversion.json"))["recommended_stop"]; print(",".join(f"{k}={v}" for k, v in p.items()))')"
  ecmt eval --steps 32 --backend "$backend" --policy $(printf 'min_gate=%s ' "${gates[@]}") \
    $(for m in 2 3 4 5 6 7 8; do printf '%s,min_steps=%s ' "$recommended" "$m"; done) \
    --stop-at 0.5 0.7 0.9 --stable-steps 0 1 2 > "$out/test-default.json"
  # The paper's neuron (the conversion shipped before; no temperatures), for comparison.
  ecmt eval --steps 32 --backend "$backend" --preset reference --thresholds per-channel "${paper[@]}" \
    --stop-at 0.5 0.7 0.9 --stable-steps 0 1 2 > "$out/test-paper.json"
  # The readable reference backend against the fast one on the same first test images (1,000 by default).
  cross="${ECMT_CROSS_CHECK_IMAGES:-1000}"
  ecmt eval --steps 32 --backend reference --limit "$cross" > "$out/cross-check-reference.json"
  ecmt eval --steps 32 --backend "$backend" --limit "$cross" > "$out/cross-check-$backend.json"
fi
if [[ "$stage" == all || "$stage" == test || "$stage" == eva ]]; then
  # The EVA-layout model (models/fmnist-eva, converted with the same recipe), its table beside the ViT's.
  ecmt eval --model models/fmnist-eva --steps 32 --backend "$backend" > "$out/test-eva.json"
fi
/usr/bin/python3 scripts/results_tables.py "$out"
if [[ -f "$out/test-default.json" ]]; then
  [[ -f src/Cli/bin/Release/net10.0/ecmt.dll ]] || dotnet build src/Cli -c Release --nologo -v q -clp:ErrorsOnly
  ecmt plot --eval "$out/test-default.json" --output "$out" >/dev/null
fi
