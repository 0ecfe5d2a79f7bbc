"""Paired gains between runs of two label-efficiency folders (or a committed rotation JSON), with the
rotation's bootstrap intervals: round 26's table in BENCHMARKS.md.

    python benchmarks/cross_gain.py runs/le_rotation:diffhrnet runs/le_rot_mlp01:ddpm_mlp
    python benchmarks/cross_gain.py runs/le_rotation:ddpm_mlp benchmarks/label_efficiency_rotation.json:ddpm_mlp

Each side is ``<folder or .json>:<method>``; runs are paired by (held-out scene, budget, seed). A
folder is read from its finished runs (``runs/<scene>/<method>_b<budget>_s<seed>/summary.json``), a
JSON from its ``rows``. Prints per-budget mean mIoU of both sides, the mean paired gain with its 95 %
interval (10,000 resamples, seed 0: the rotation's), how many pairs are positive, and the largest
per-run difference (0.0 when the two sides are the same runs reproduced).
"""

import json
import sys
from collections import defaultdict
from pathlib import Path

from diffhrnet_lab.experiments.label_efficiency import bootstrap_mean, run_row


def side(spec: str) -> dict[tuple[str, int, int], float]:
    where, method = spec.rsplit(":", 1)
    path = Path(where)
    if path.suffix == ".json":
        rows = [r for r in json.loads(path.read_text())["rows"] if r["method"] == method]
        return {(r["held_out"], r["budget"], r["seed"]): 100 * r["miou"] for r in rows}
    out = {}
    for f in sorted(path.glob(f"runs/*/{method}_b*_s*/summary.json")):
        _, b, s = f.parent.name.rsplit("_", 2)
        out[f.parent.parent.name, int(b[1:]), int(s[1:])] = 100 * run_row(json.loads(f.read_text()), method, "", 0, 0)["miou"]
    return out


a, b = side(sys.argv[1]), side(sys.argv[2])
pairs = defaultdict(list)
for key in sorted(a.keys() & b.keys()):
    pairs[key[1]].append((a[key], b[key]))
print(f"| labelled scenes | pairs | {sys.argv[1]} | {sys.argv[2]} | paired gain [95 % CI] | positive | largest per-run difference |")
print("|---|---|---|---|---|---|---|")
for budget, ab in sorted(pairs.items()):
    gains = [x - y for x, y in ab]
    e = bootstrap_mean(gains)
    mean_a, mean_b = (sum(v) / len(v) for v in zip(*ab))
    print(f"| {budget} | {len(ab)} | {mean_a:.1f} | {mean_b:.1f} | {e['mean']:+.1f} [{e['lo']:+.1f}, {e['hi']:+.1f}] | "
          f"{sum(g > 0 for g in gains)}/{len(gains)} | {max(abs(g) for g in gains):.2f} |")
only = (a.keys() ^ b.keys())
if only:
    print(f"{len(only)} run(s) on one side only, left out: {sorted(only)[:6]}{' ...' if len(only) > 6 else ''}")
