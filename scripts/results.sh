#!/usr/bin/env bash
# Regenerates the measurements behind docs/results.md: every eval run writes its JSON to docs/results/, then
# scripts/results_tables.py turns them into the tables. Takes about 45 minutes on 2 cores (fastcpu backend).
#
#   scripts/results.sh              # everything
#   scripts/results.sh validation   # only the runs that choose the conversion (then: ecmt convert with the best)
#   scripts/results.sh test         # only the test-set runs
#   scripts/results.sh tables       # only re-render the tables from the JSON already there
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
if [[ "$stage" == all || "$stage" == validation ]]; then
  # Choosing the conversion: presets, granularity and quantile on the 2,500 validation images (never the test set).
  for preset in reference calibrated; do
    for thresholds in per-tensor per-channel; do
      for q in 0.99 0.999; do
        ecmt eval --split validation --steps 8 --preset "$preset" --thresholds "$thresholds" --quantile "$q" \
          --backend "$backend" > "$out/validation-$preset-$thresholds-q$q.json"
      done
    done
  done
fi
if [[ "$stage" == all || "$stage" == test ]]; then
  # The test set with the shipped conversion (eval's defaults): T = 32 gives every T <= 32 at once, and the early-exit
  # study (probability threshold p, with the top-1 unchanged for the last k = 1, 2, 3 steps) comes from the same run.
  stops=(0.5 0.6 0.7 0.8 0.9 0.95 0.99)
  ecmt eval --steps 32 --backend "$backend" --stop-at "${stops[@]}" --confirm-steps 1 2 3 > "$out/test-default.json"
  shipped="$(/usr/bin/python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["preset"], r["thresholds"])' "$out/test-default.json")"
  # The other presets and granularities (each recalibrated with the shipped quantile).
  for preset in reference calibrated; do
    for thresholds in per-tensor per-channel; do
      [[ "$preset $thresholds" == "$shipped" ]] && continue
      ecmt eval --steps 32 --preset "$preset" --thresholds "$thresholds" --backend "$backend" \
        --stop-at "${stops[@]}" > "$out/test-$preset-$thresholds.json"
    done
  done
  # The readable reference backend against the fast one on the same first test images (1,000 by default).
  cross="${ECMT_CROSS_CHECK_IMAGES:-1000}"
  ecmt eval --steps 32 --backend reference --limit "$cross" > "$out/cross-check-reference.json"
  ecmt eval --steps 32 --backend "$backend" --limit "$cross" > "$out/cross-check-$backend.json"
fi
/usr/bin/python3 scripts/results_tables.py "$out"
