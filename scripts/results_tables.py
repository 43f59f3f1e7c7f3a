#!/usr/bin/python3
"""Renders the eval JSON in docs/results/ as the tables of docs/results.md (between its table markers)."""
import glob
import json
import os
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "docs/results"
STEPS = [1, 2, 4, 8, 16, 32]
THRESHOLDS = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]


def load(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if os.path.exists(path) else None


def pct(x):
    return f"{100 * x:.2f}"


lines = []
default = load("test-default.json")


def run_for(preset, granularity):
    """The test run of one preset and granularity: its own file, or the shipped conversion's run when that is the one."""
    run = load(f"test-{preset}-{granularity}.json")
    if run is None and default and (default["preset"], default["thresholds"]) == (preset, granularity):
        run = dict(default, command="ecmt eval --steps 32", note=": the shipped conversion, eval's default")
    return run


runs = [(p, g, run_for(p, g)) for p in ("reference", "calibrated") for g in ("per-tensor", "per-channel")]
runs = [r for r in runs if r[2]]
if default:
    lines += [f"ANN top-1 on the {default['samples']:,} test images: **{pct(default['ann_top1'])} %**.", ""]

for preset, granularity, run in runs:
    lines += [f"### {preset} preset, {granularity} thresholds (p = {run['quantile']})", "",
              "`" + run.get("command", f"ecmt eval --steps 32 --preset {preset} --thresholds {granularity}")
              + f" --backend {run['backend']}` ({run['seconds']:.0f} s){run.get('note', '')}", "",
              "| T | SNN top-1 % | vs ANN (points) | energy ratio | firing rate |", "|---|---|---|---|---|"]
    for t in STEPS:
        if t <= run["steps"]:
            top1 = run["snn_top1_by_step"][t - 1]
            lines.append(f"| {t} | {pct(top1)} | {100 * (top1 - run['ann_top1']):+.2f} | "
                         f"{run['energy_ratio_by_step'][t - 1]:.3f} | {run['firing_rate_by_step'][t - 1]:.3f} |")
    lines.append("")

if default and "early_exit" in default:
    exits = default["early_exit"] if isinstance(default["early_exit"], list) else [default["early_exit"]]
    confirms = sorted({e.get("confirm_steps", 1) for e in exits})
    lines += ["### Early exit (shipped conversion)", "",
              f"`ecmt eval --steps 32 --stop-at {' '.join(str(t) for t in THRESHOLDS)} --confirm-steps "
              f"{' '.join(str(k) for k in confirms)}`: each image stops at the first step whose top-1 probability "
              "reaches p and whose top-1 class has been the same for the last k steps (k = 1: the probability alone), "
              "else at T = 32. All rows come from the one run of the table above.", "",
              "| p | k | top-1 % | vs ANN (points) | mean steps | energy ratio |", "|---|---|---|---|---|---|"]
    for e in exits:
        lines.append(f"| {e['threshold']} | {e.get('confirm_steps', 1)} | {pct(e['top1'])} | "
                     f"{100 * (e['top1'] - default['ann_top1']):+.2f} | {e['mean_steps']:.2f} | {e['energy_ratio']:.3f} |")
    lines.append("")

validation = sorted(glob.glob(os.path.join(out, "validation-*.json")))
if validation:
    lines += ["### Choosing the conversion on held-out training images", "",
              "`ecmt eval --split validation --steps 8 --preset P --thresholds G --quantile q` (2,500 images never "
              "used for training or calibration):", "",
              "| preset | thresholds | p | ANN % | T=1 | T=2 | T=4 | T=8 | mean T=1..8 | energy T=4 |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    shipped = (default["preset"], default["thresholds"], default["quantile"]) if default else None
    for path in validation:
        r = json.load(open(path))
        s = r["snn_top1_by_step"]
        mark = " **(shipped)**" if (r["preset"], r["thresholds"], r["quantile"]) == shipped else ""
        lines.append(f"| {r['preset']}{mark} | {r['thresholds']} | {r['quantile']} | {pct(r['ann_top1'])} | "
                     f"{pct(s[0])} | {pct(s[1])} | {pct(s[3])} | {pct(s[7])} | {pct(sum(s[:8]) / 8)} | "
                     f"{r['energy_ratio_by_step'][3]:.3f} |")
    lines.append("")

cross = load("cross-check-reference.json")
fast = [load(os.path.basename(f)) for f in sorted(glob.glob(os.path.join(out, "cross-check-*.json")))
        if not f.endswith("-reference.json")]
if cross and fast:
    other = fast[0]
    diffs = [abs(a - b) for a, b in zip(other["snn_top1_by_step"], cross["snn_top1_by_step"])]
    lines += ["### The readable reference backend on the same images", "",
              f"`ecmt eval --steps 32 --limit {cross['samples']} --backend reference` ({cross['seconds']:.0f} s) against "
              f"`--backend {other['backend']}` ({other['seconds']:.0f} s): per-step top-1 differs by at most "
              f"{100 * max(diffs):.2f} points over t = 1..32 (T = 8: {pct(cross['snn_top1_by_step'][7])} % against "
              f"{pct(other['snn_top1_by_step'][7])} %).", ""]

doc = "docs/results.md"
text = open(doc).read() if os.path.exists(doc) else "<!-- tables:begin -->\n<!-- tables:end -->\n"
begin, end = "<!-- tables:begin -->", "<!-- tables:end -->"
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
open(doc, "w").write(head + begin + "\n" + "\n".join(lines) + end + tail)
print(f"wrote {len(lines)} lines of tables into {doc}")
