"""Per-run paired gains of one method over another, and the screening score, from a label-efficiency
folder (finished runs only): the table of the noise floor and of round 20 in BENCHMARKS.md.

    python benchmarks/paired_score.py runs/le_screen_b12 diffhrnet ddpm_mlp

The score is the mean over budgets of the mean gain over the (fold, seed) pairs both methods have.
"""

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from diffhrnet_lab.experiments.label_efficiency import run_row

folder, method, reference = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
miou = {}
for f in sorted(folder.glob("runs/*/*/summary.json")):
    name, b, s = f.parent.name.rsplit("_", 2)
    miou[name, f.parent.parent.name, int(b[1:]), int(s[1:])] = 100 * run_row(json.loads(f.read_text()), name, "", 0, 0)["miou"]
gains = defaultdict(list)
print("| held out | labelled scenes | seed | " + method + " − " + reference + " |\n|---|---|---|---|")
for (name, fold, budget, seed), m in sorted(miou.items(), key=lambda kv: (kv[0][2], kv[0][3], kv[0][1])):
    ref = miou.get((reference, fold, budget, seed))
    if name != method or ref is None:
        continue
    gains[budget].append(m - ref)
    print(f"| {fold} | {budget} | {seed} | {m:.1f} − {ref:.1f} = {m - ref:+.1f} |")
for budget, g in sorted(gains.items()):
    sd = statistics.stdev(g) if len(g) > 1 else float("nan")
    print(f"budget {budget}: {len(g)} pairs, mean gain {statistics.mean(g):+.2f}, sd of a run's gain {sd:.1f}")
if len(gains) == 2:
    print(f"screening score (mean over budgets): {statistics.mean(statistics.mean(g) for g in gains.values()):+.2f}")
