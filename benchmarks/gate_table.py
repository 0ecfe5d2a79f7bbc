"""Round 14 table (BENCHMARKS.md): per (λ, τ), mean gain over HRNet and the pixel classifier per budget, and the rule's score.

    python benchmarks/gate_table.py runs/gate_screen.jsonl runs/le_screen 10
"""
import json, sys, collections
from pathlib import Path
rows = [json.loads(l) for l in open(sys.argv[1])]
base_root = Path(sys.argv[2])  # where the hrnet / ddpm_mlp runs of the same folds and seeds are
seed = sys.argv[3]
def ref(m, fold, b):
    return 100 * json.loads((base_root / "runs" / fold / f"{m}_b{b}_s{seed}" / "summary.json").read_text())["best_scores"]["miou"]
g = collections.defaultdict(lambda: collections.defaultdict(list))
for r in rows:
    name = Path(r["run"]).name
    b = int(name.split("_b")[1].split("_")[0])
    key = (r["lambda"], r["tau"])
    g[key][b].append((100 * r["miou"] - ref("hrnet", r["held_out"], b), 100 * r["miou"] - ref("ddpm_mlp", r["held_out"], b)))
print("| λ | τ | n | vs HRNet 1 / 2 | vs pixel classifier 1 / 2 | score |")
print("|---|---|---|---|---|---|")
for key in sorted(g, key=lambda k: (k[0], -1 if k[1] is None else k[1])):
    d = g[key]
    m = {b: (sum(x[0] for x in d[b]) / len(d[b]), sum(x[1] for x in d[b]) / len(d[b])) for b in d}
    score = sum(min(m[b]) for b in m) / len(m)
    print(f"| {key[0]} | {key[1] or 'none'} | {sum(len(v) for v in d.values())} | " + " / ".join(f"{m[b][0]:+.1f}" for b in sorted(m))
          + " | " + " / ".join(f"{m[b][1]:+.1f}" for b in sorted(m)) + f" | {score:+.2f} |")
