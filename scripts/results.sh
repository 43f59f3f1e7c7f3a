#!/usr/bin/env bash
# Regenerates the measurements behind docs/results.md: every eval run writes its JSON to docs/results/, then
# scripts/results_tables.py turns them into the tables. Takes about an hour on 2 cores (fastcpu backend).
#
#   scripts/results.sh            # everything
#   scripts/results.sh tables     # only re-render the tables from the JSON already there
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/results
mkdir -p "$out"
ecmt() { dotnet src/Cli/bin/Release/net10.0/ecmt.dll "$@"; }

if [[ "${1:-}" != "tables" ]]; then
  ./scripts/setup.sh
  dotnet build src/Cli -c Release --nologo -v q -clp:ErrorsOnly
  backend="${ECMT_BACKEND:-fastcpu}"
  # Choosing the conversion: presets, granularity and quantile on the 2,500 validation images (never the test set).
  for preset in reference calibrated; do
    for thresholds in per-tensor per-channel; do
      for q in 0.9 0.99 0.999; do
        ecmt eval --split validation --steps 8 --preset "$preset" --thresholds "$thresholds" --quantile "$q" \
          --backend "$backend" > "$out/validation-$preset-$thresholds-q$q.json"
      done
    done
  done
  # The test set: T = 32 gives every T ≤ 32 at once; early exit over thresholds from the same run.
  for preset in reference calibrated; do
    for thresholds in per-tensor per-channel; do
      ecmt eval --steps 32 --preset "$preset" --thresholds "$thresholds" --backend "$backend" \
        --stop-at 0.5 0.6 0.7 0.8 0.9 0.95 0.99 > "$out/test-$preset-$thresholds.json"
    done
  done
  # The shipped conversion (eval's defaults), and the reference backend on the same run as a cross-check.
  ecmt eval --steps 32 --backend "$backend" --stop-at 0.5 0.6 0.7 0.8 0.9 0.95 0.99 > "$out/test-default.json"
  ecmt eval --steps 32 --backend reference > "$out/test-default-reference-backend.json"
fi
/usr/bin/python3 scripts/results_tables.py "$out"
