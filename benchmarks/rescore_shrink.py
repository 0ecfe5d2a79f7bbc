"""Diagnostic: the residual Diff-HRNet (``model.residual``) scored with HRNet's correction scaled
by λ (its last 1x1 convolution multiplied by λ; the logits are linear in it): λ = 0 is the
pixel-classifier base alone as trained inside the fused model, λ = 1 the model as trained.

    python benchmarks/rescore_shrink.py runs/le_screen --method ms_res --seeds 10 --lambdas 0,0.5 \
        --out runs/shrink_screen.jsonl [--folds Tile_1,Tile_2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from diffhrnet_lab.data.datasets import LabelledTiles, find_pairs
from diffhrnet_lab.data.io import BandStats
from diffhrnet_lab.features.tile_cache import tile_features
from diffhrnet_lab.inference.evaluate import validate
from diffhrnet_lab.inference.metrics import scores
from diffhrnet_lab.models.segmenters import load_segmenter


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
                model, meta = load_segmenter(run / "last")
                ds = LabelledTiles([p for p in pairs if p.group == fold], meta["scheme"],
                                   stats=BandStats.from_dict(meta["stats"]))
                fx = model.extractor
                fx.cache_dir = Path(meta["features"]["cache_dir"])
                items = [(p.id, torch.from_numpy(im)) for p, im in zip(ds.pairs, ds.images)]
                ds.attach_features(tile_features(fx, items, window=meta["features"]["cache_window"], progress=False,
                                                 dtype=meta["features"]["cache_dtype"]),
                                   [fx.info[b]["stride"] for _, b in fx.keys])
                w0, b0 = model.head.classify.weight.detach().clone(), model.head.classify.bias.detach().clone()
                for lam in map(float, a.lambdas.split(",")):
                    with torch.no_grad():
                        model.head.classify.weight.copy_(lam * w0)
                        model.head.classify.bias.copy_(lam * b0)
                    cm, _ = validate(model, ds, int(meta["eval_window"]), torch.device("cpu"))
                    sc = scores(cm, list(ds.scheme.classes)).as_dict()
                    row = {"run": str(run), "held_out": fold, "budget": budget, "seed": int(seed), "lambda": lam,
                           "miou": sc["miou"], "iou": sc["iou"]}
                    with open(a.out, "a") as fh:
                        fh.write(json.dumps(row) + "\n")
                    print(fold, budget, seed, "lambda", lam, f"{100 * sc['miou']:.2f}", flush=True)


if __name__ == "__main__":
    main()
