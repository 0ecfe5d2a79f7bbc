"""Re-score finished label-efficiency runs with and without BatchNorm statistics re-estimated on the
held-out scene (AdaBN, ``diffhrnet_lab.inference.adapt``): no retraining, the same checkpoints.

    python benchmarks/rescore_adabn.py runs/le_screen --methods hrnet,ddpm_mlp,ms_res --seeds 10 \
        --data data_samples/dubai_aerial --out runs/adabn_screen.json [--batches 50] [--folds Tile_1]

Appends one JSON row per (run, adapt) to ``--out`` (runs already there are skipped: resumable).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffhrnet_lab.data.datasets import find_pairs
from diffhrnet_lab.inference.evaluate import score_checkpoint
from diffhrnet_lab.models.segmenters import saved_features


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--methods", required=True)
    ap.add_argument("--seeds", required=True)
    ap.add_argument("--data", default="data_samples/dubai_aerial")
    ap.add_argument("--out", required=True)
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--folds", default="")
    ap.add_argument("--budgets", default="1,2")
    ap.add_argument("--skip-plain", action="store_true", help="score with adaptation only")
    ap.add_argument("--within", default="", help="only BatchNorm layers under this submodule (e.g. backbone)")
    a = ap.parse_args()
    out = Path(a.out)
    done = set()
    if out.exists():
        done = {(r["run"], r["adapt"]) for r in map(json.loads, out.read_text().splitlines())}
    pairs = find_pairs(a.data)
    folds = a.folds.split(",") if a.folds else sorted({p.group for p in pairs})
    for fold in folds:
        for seed in a.seeds.split(","):
            for budget in a.budgets.split(","):
                for method in a.methods.split(","):
                    run = Path(a.root) / "runs" / fold / f"{method}_b{budget}_s{seed}"
                    todo = [x for x in ((a.batches,) if a.skip_plain else (0, a.batches)) if (str(run), x) not in done]
                    if not todo or not (run / "summary.json").exists():
                        continue
                    meta = json.loads((run / "last" / "model.json").read_text())
                    fc = saved_features(meta)
                    held = [p for p in pairs if p.group == fold]
                    for x, (_, _, sc) in zip(todo, score_checkpoint(run / "last", held, fc, adapt=todo,
                                                                     adapt_within=a.within)):
                        row = {"run": str(run), "method": method, "held_out": fold, "budget": int(budget),
                               "seed": int(seed), "adapt": x, "within": a.within, "miou": sc.as_dict()["miou"],
                               "iou": sc.as_dict()["iou"],
                               "trained_miou": json.loads((run / "summary.json").read_text())["best_miou"]}
                        with out.open("a") as fh:
                            fh.write(json.dumps(row) + "\n")
                        print(fold, method, budget, seed, "adapt", x, f"{100 * row['miou']:.2f}",
                              f"(trained run: {100 * row['trained_miou']:.2f})", flush=True)


if __name__ == "__main__":
    main()
