"""Diagnostic: the residual Diff-HRNet (``model.residual``) scored with HRNet's correction scaled
by λ (``model.correction_scale=λ`` at scoring; the logits are linear in it): λ = 0 is the
pixel-classifier base alone as trained inside the fused model, λ = 1 the model as trained.

    python benchmarks/rescore_shrink.py runs/le_screen --method ms_res --seeds 10 --lambdas 0,0.5 \
        --out runs/shrink_screen.jsonl [--folds Tile_1,Tile_2]
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
    ap.add_argument("--method", default="ms_res")
    ap.add_argument("--seeds", required=True)
    ap.add_argument("--lambdas", default="0,0.5")
    ap.add_argument("--data", default="data_samples/dubai_aerial")
    ap.add_argument("--folds", default="")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    pairs = find_pairs(a.data)
    folds = a.folds.split(",") if a.folds else sorted({p.group for p in pairs})
    for fold in folds:
        for seed in a.seeds.split(","):
            for budget in (1, 2):
                run = Path(a.root) / "runs" / fold / f"{a.method}_b{budget}_s{seed}"
                if not (run / "summary.json").exists():
                    continue
                fc = saved_features(json.loads((run / "last" / "model.json").read_text()))
                held = [p for p in pairs if p.group == fold]
                for lam in map(float, a.lambdas.split(",")):
                    # correction_scale is the λ of this diagnostic (scoring only; 0: the base alone)
                    sc = score_checkpoint(run / "last", held, fc, scoring={"correction_scale": lam})[2].as_dict()
                    row = {"run": str(run), "held_out": fold, "budget": budget, "seed": int(seed), "lambda": lam,
                           "miou": sc["miou"], "iou": sc["iou"]}
                    with open(a.out, "a") as fh:
                        fh.write(json.dumps(row) + "\n")
                    print(fold, budget, seed, "lambda", lam, f"{100 * sc['miou']:.2f}", flush=True)


if __name__ == "__main__":
    main()
