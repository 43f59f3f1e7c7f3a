#!/usr/bin/python3
"""Renders the JSON in docs/results/ (ecmt eval and ecmt ablate runs) as the tables of docs/results.md, between its
table markers, with the charts `ecmt plot` draws next to them."""
import glob
import json
import os
import re
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "docs/results"
STEPS = [1, 2, 3, 4, 8, 16, 32]


def load(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if os.path.exists(path) else None


def pct(x):
    return f"{100 * x:.2f}"


def points(x, ann):
    return f"{100 * (x - ann):+.2f}"


def policy_text(p):
    """{"min_confidence": 0.9, "stable_steps": 1} -> 'confidence >= 0.9, stable 1'."""
    names = [("min_confidence", "confidence ≥ {}"), ("min_margin", "margin ≥ {}"), ("min_gate", "gate ≥ {}"),
             ("stable_steps", "stable {} step(s)"), ("min_steps", "t ≥ {}")]
    parts = [fmt.format(p[k]) for k, fmt in names if p.get(k) is not None]
    return ", ".join(parts) or "none (T = 32)"


def rounding(r, path=""):
    if "rounding" in r:
        return r["rounding"]
    return "nearest" if "nearest" in os.path.basename(path) else "half-base"


def level(r, path=""):
    """The quantile level of the calibrated places (fc_qkv's), from the run or its file name."""
    if "quantile_levels" in r:
        return r["quantile_levels"].get("fc_qkv", 0)
    m = re.search(r"level(\d)", os.path.basename(path))
    return int(m.group(1)) if m else 0


lines = []
default = load("test-default.json")
paper = load("test-paper.json")

if default:
    ann = default["ann_top1"]
    s = default["snn_top1_by_step"]
    ece = default.get("ece_by_step", {})
    lines += [f"ANN top-1 on the {default['samples']:,} test images: **{pct(ann)} %**.", "",
              f"### The shipped conversion on the test set", "",
              f"`ecmt eval --steps 32 --backend {default['backend']}` ({default['seconds']:.0f} s; preset {default['preset']}, "
              f"{default['thresholds']} thresholds, p = {default['quantile']}, rounding {rounding(default)}, the quantile as "
              f"level {level(default)} at fc_qkv, q, k, v, fc_out and fc1)", "",
              "| T | SNN top-1 % | vs ANN (points) | energy ratio | firing rate | ECE, τ = 1 | ECE, τ_t | τ_t |",
              "|---|---|---|---|---|---|---|---|"]
    for t in STEPS:
        if t <= default["steps"]:
            lines.append(f"| {t} | {pct(s[t - 1])} | {points(s[t - 1], ann)} | {default['energy_ratio_by_step'][t - 1]:.3f} | "
                         f"{default['firing_rate_by_step'][t - 1]:.3f} | {ece['uncalibrated'][t - 1]:.4f} | "
                         f"{ece['calibrated'][t - 1]:.4f} | {default['temperatures'][t - 1]:.3f} |")
    calibrated = ece.get("calibrated", [])[:16]
    if calibrated:
        worst = max(range(len(calibrated)), key=lambda i: calibrated[i])
        lines += ["", f"Expected calibration error (15 bins) of the calibrated top-1 at t = 1..16: at most "
                  f"**{calibrated[worst]:.4f}** (t = {worst + 1}); without temperatures at least "
                  f"{min(ece['uncalibrated'][:16]):.4f}. Logit error |z(t)/t − ANN logits| (mean of the largest per image): "
                  + ", ".join(f"{default['logit_error_by_step'][t - 1]:.2f} at t = {t}" for t in (1, 2, 4, 8, 16, 32)
                              if t <= default["steps"]) + ".", ""]

    lines += ["### Early exit on the test set (shipped conversion)", "",
              "All rows come from the one run above: each image stops at the first step where every rule of the policy "
              "holds (the shared definition: calibrated confidence, top-1 stable for k steps, at least m steps, the gate), "
              "else at T = 32. The recommended policy was chosen at conversion on the validation images (the fewest mean "
              "steps within 0.5 point of the ANN there); the oracle knows the future and bounds any rule.", "",
              "| policy | top-1 % | vs ANN (points) | mean steps | energy ratio |", "|---|---|---|---|---|"]
    rows = []
    if "recommended" in default:
        r = default["recommended"]
        rows.append((f"**recommended: {policy_text(r['policy'])}**", r))
    if "oracle" in default:
        rows.append((f"oracle (stops where the top-1 stops changing up to T = {default['steps']})", default["oracle"]))
    for e in default.get("early_exit", []):
        rows.append((policy_text(e["policy"]), e))
    for name, r in rows:
        lines.append(f"| {name} | {pct(r['top1'])} | {points(r['top1'], ann)} | {r['mean_steps']:.2f} | {r['energy_ratio']:.3f} |")
    lines += ["", "Every image stopped at the same T, for comparison: "
              + ", ".join(f"T = {t}: {pct(s[t - 1])} % (energy {default['energy_ratio_by_step'][t - 1]:.3f})" for t in (1, 2, 3, 4, 8)) + ".", ""]
    if os.path.exists(os.path.join(out, "early-exit.png")):
        lines += ["![Top-1 against mean steps: the gate's thresholds, fixed T, the recommended policy and the oracle](results/early-exit.png)", ""]
    if os.path.exists(os.path.join(out, "reliability-calibrated.png")):
        lines += ["Reliability at t = 1, 2, 4, 8 (`ecmt plot`), without and with the per-step temperatures:", "",
                  "![Reliability without temperatures](results/reliability-uncalibrated.png) "
                  "![Reliability with per-step temperatures](results/reliability-calibrated.png)", ""]

eva = load("test-eva.json")
if eva:
    ann = eva["ann_top1"]
    s = eva["snn_top1_by_step"]
    vit = default["snn_top1_by_step"] if default else None
    lines += ["### The EVA-layout model on the test set, beside the ViT", "",
              f"`models/fmnist-eva` (q/v bias, layer scale, a relative position bias per block, no absolute position "
              f"embedding, mean pooling + fc_norm; README \"The EVA-layout model\"), converted with the ViT's recipe: "
              f"`ecmt eval --model models/fmnist-eva --steps 32 --backend {eva['backend'].split()[0]}` ({eva['seconds']:.0f} s on the shared machine, backend {eva['backend']}). "
              f"ANN top-1 **{pct(ann)} %**" + (f" (the ViT's: {pct(default['ann_top1'])} %)." if default else "."), "",
              "| T | EVA SNN top-1 % | vs its ANN (points) | energy ratio | firing rate | ECE, τ_t |"
              + (" ViT SNN top-1 % |" if vit else ""),
              "|---|---|---|---|---|---|" + ("---|" if vit else "")]
    for t in STEPS:
        if t <= eva["steps"]:
            row = (f"| {t} | {pct(s[t - 1])} | {points(s[t - 1], ann)} | {eva['energy_ratio_by_step'][t - 1]:.3f} | "
                   f"{eva['firing_rate_by_step'][t - 1]:.3f} | {eva.get('ece_by_step', {}).get('calibrated', [float('nan')] * 64)[t - 1]:.4f} |")
            if vit:
                row += f" {pct(vit[t - 1])} |" if t <= default["steps"] else " |"
            lines.append(row)
    if "recommended" in eva:
        r = eva["recommended"]
        lines += ["", f"Its recommended policy ({policy_text(r['policy'])}, chosen at conversion on its validation images): "
                  f"{pct(r['top1'])} % ({points(r['top1'], ann)}) at {r['mean_steps']:.2f} mean steps, energy {r['energy_ratio']:.3f}. "
                  "Logit error |z(t)/t − ANN logits|: "
                  + ", ".join(f"{eva['logit_error_by_step'][t - 1]:.2f} at t = {t}" for t in (1, 2, 4, 8, 16, 32) if t <= eva["steps"]) + "."]
    lines.append("")

if paper:
    ann = paper["ann_top1"]
    s = paper["snn_top1_by_step"]
    lines += ["### The paper's neuron on the test set (the conversion shipped before)", "",
              f"`ecmt eval --steps 32 --preset reference --thresholds per-channel --rounding half-base --quantile-levels "
              f"(every place 0)` ({paper['seconds']:.0f} s): half-base firing offsets, the quantile as the lowest level, "
              "no temperatures.", "",
              "| T | SNN top-1 % | vs ANN (points) | energy ratio | firing rate |", "|---|---|---|---|---|"]
    for t in STEPS:
        if t <= paper["steps"]:
            lines.append(f"| {t} | {pct(s[t - 1])} | {points(s[t - 1], ann)} | {paper['energy_ratio_by_step'][t - 1]:.3f} | "
                         f"{paper['firing_rate_by_step'][t - 1]:.3f} |")
    if paper.get("early_exit"):
        lines += ["", "| policy (softmax(z/t), no temperatures) | top-1 % | vs ANN (points) | mean steps | energy ratio |",
                  "|---|---|---|---|---|"]
        if "oracle" in paper:
            o = paper["oracle"]
            lines.append(f"| oracle | {pct(o['top1'])} | {points(o['top1'], ann)} | {o['mean_steps']:.2f} | {o['energy_ratio']:.3f} |")
        for e in paper["early_exit"]:
            lines.append(f"| {policy_text(e['policy'])} | {pct(e['top1'])} | {points(e['top1'], ann)} | {e['mean_steps']:.2f} | {e['energy_ratio']:.3f} |")
    lines.append("")

for name, title in (("ablation-paper.json", "the paper's neuron"), ("ablation-shipped.json", "the shipped conversion")):
    ab = load(name)
    if not ab:
        continue
    steps = ab["steps"]
    lines += [f"### What limits the first steps: ablation, {title}", "",
              f"`ecmt ablate --steps {steps} --limit {ab['samples']}` on the first {ab['samples']:,} validation images "
              f"(reference backend; ANN {pct(ab['ann_top1'])} % on them). One place at a time is made exact in every block: "
              "a *lossless* neuron place passes its whole membrane on at every step (no quantisation there; what reaches it "
              "still carries every earlier error); an *ANN value* EC module emits the ANN's activation at every step (its "
              "running output is exactly t × the ANN's, which removes every error made before it in that branch).", "",
              "| exact | kind | " + " | ".join(f"t = {t}" for t in range(1, steps + 1)) + " | logit error t = 1 |",
              "|---|---|" + "---|" * steps + "---|"]
    for r in ab["runs"]:
        lines.append(f"| {r['exact']} | {r['kind']} | " + " | ".join(pct(v) for v in r["top1_by_step"])
                     + f" | {r['logit_error_by_step'][0]:.3f} |")
    lines.append("")

validation = sorted(glob.glob(os.path.join(out, "validation-*.json")))
if validation:
    lines += ["### Choosing the conversion on held-out training images", "",
              "`ecmt eval --split validation --steps 8 --preset P --thresholds G --quantile p --rounding R --quantile-levels "
              "…=j` (2,500 images never used for training or calibration; j applies to fc_qkv, q, k, v, fc_out and fc1, "
              "and to s and fc2 too in the calibrated row). Chosen by the mean top-1 over T = 1..8, the accuracy a "
              "streaming client sees when it may stop at any step.", "",
              "| preset | thresholds | p | rounding | level j | T=1 | T=2 | T=4 | T=8 | mean T=1..8 | energy T=4 |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    shipped = (default["preset"], default["thresholds"], default["quantile"], rounding(default), level(default)) if default else None
    rows = []
    for path in validation:
        r = json.load(open(path))
        s = r["snn_top1_by_step"]
        key = (r["preset"], r["thresholds"], r["quantile"], rounding(r, path), level(r, path))
        rows.append((sum(s[:8]) / 8, key, r, s))
    for mean, key, r, s in sorted(rows, key=lambda x: -x[0]):
        mark = " **(shipped)**" if key == shipped else ""
        lines.append(f"| {key[0]}{mark} | {key[1]} | {key[2]} | {key[3]} | {key[4]} | {pct(s[0])} | {pct(s[1])} | "
                     f"{pct(s[3])} | {pct(s[7])} | {pct(mean)} | {r['energy_ratio_by_step'][3]:.3f} |")
    lines += ["", f"ANN top-1 on the validation images: {pct(rows[0][2]['ann_top1'])} %.", ""]

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
