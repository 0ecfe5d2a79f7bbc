"""Round 16 probe (scoring only): the mean of several residual models' logits, base + λ · correction.

For each held-out fold and budget, every model's base and correction come from two passes
(correction_scale 0 and 1; the logits are linear in it, window blending included). One JSON line
per (fold, budget, λ) with the ensemble's mIoU and per-class IoU, and each model's own mIoU at λ.

    python benchmarks/ensemble_probe.py OUT.jsonl ROOT FOLD BUDGET METHOD [METHOD ...]
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from diffhrnet_lab.data.datasets import find_pairs
from diffhrnet_lab.inference.evaluate import predict_tile, scoring_inputs
from diffhrnet_lab.inference.metrics import confusion_matrix, scores
from diffhrnet_lab.models.segmenters import load_segmenter, saved_features

LAMBDAS = (0.0, 0.5, 1.0)
out, root, fold, budget, methods = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5:]
pairs = [p for p in find_pairs("data_samples/dubai_aerial") if p.group == fold]
models, ds, first = [], None, None
for m in methods:  # one copy of the scene's cached features (GBs) serves every model: same DDPM, keys, stats
    run = root / "runs" / fold / f"{m}_b{budget}_s10"
    meta = json.loads((run / "last" / "model.json").read_text())
    fc = saved_features(meta)
    if ds is None:
        model, meta, ds = scoring_inputs(run / "last", pairs, fc, scoring={"correction_scale": 1.0})
        first = (fc, meta["stats"])
    else:
        assert (fc, meta["stats"]) == first, f"{run}: other features or statistics than {methods[0]}"
        model, meta = load_segmenter(run / "last", fc.checkpoint or None, scoring={"correction_scale": 1.0})
    models.append((m, model.eval(), int(meta.get("eval_window") or 128), ds))
scheme = ds.scheme
k = scheme.num_classes
ens = {lam: torch.zeros(k, k, dtype=torch.int64) for lam in LAMBDAS}
own = {(m, lam): torch.zeros(k, k, dtype=torch.int64) for m, *_ in models for lam in LAMBDAS}
with torch.no_grad():
    for i in range(len(pairs)):
        target = torch.from_numpy(ds.masks[i].astype(np.int64))
        total_base = total_corr = 0.0
        for m, model, window, _ in models:
            img = torch.from_numpy(ds.images[i])
            model.correction_scale = 0.0
            base = predict_tile(model, img, window, ds.features[i], ds.strides)
            model.correction_scale = 1.0
            corr = predict_tile(model, img, window, ds.features[i], ds.strides) - base
            for lam in LAMBDAS:
                own[m, lam] += confusion_matrix((base + lam * corr).argmax(0), target, k, scheme.ignore_index)
            total_base, total_corr = total_base + base, total_corr + corr
        for lam in LAMBDAS:
            ens[lam] += confusion_matrix((total_base + lam * total_corr).argmax(0), target, k, scheme.ignore_index)
        print(fold, budget, "image", i, flush=True)
with open(out, "a") as fh:
    for lam, cm in ens.items():
        sc = scores(cm, list(scheme.classes)).as_dict()
        fh.write(json.dumps({"held_out": fold, "budget": budget, "lambda": lam, "methods": methods,
                             "miou": sc["miou"], "iou": sc["iou"],
                             "own": {m: scores(own[m, lam], list(scheme.classes)).miou for m, *_ in models}}) + "\n")
print(fold, budget, {lam: round(100 * scores(cm, list(scheme.classes)).miou, 2) for lam, cm in ens.items()})
