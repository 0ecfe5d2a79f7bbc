"""Round 14 probe (scoring only): HRNet's correction applied only where the pixel-classifier base is unsure.

logits = base + λ · correction · [max softmax(base) < τ]; base and correction from two passes
(correction_scale 0 and 1: the logits are linear in it, blending included). One JSON line per
(checkpoint, λ, τ) to the output file.

    python benchmarks/gate_probe.py OUT.jsonl ROOT:FOLD:RUN [...]
"""
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch

from diffhrnet_lab.data.datasets import find_pairs
from diffhrnet_lab.inference.evaluate import predict_tile, scoring_inputs
from diffhrnet_lab.inference.metrics import confusion_matrix, scores
from diffhrnet_lab.models.segmenters import saved_features

LAMBDAS = (0.0, 0.5, 1.0)
TAUS = (None, 0.3, 0.4, 0.5, 0.7, 0.9)  # 0.3, 0.4 added after the first checkpoint (BENCHMARKS round 14)
pairs = find_pairs("data_samples/dubai_aerial")
out = sys.argv[1]
for spec in sys.argv[2:]:
    root, fold, name = spec.split(":")
    run = Path(root) / "runs" / fold / name
    fc = saved_features(json.loads((run / "last" / "model.json").read_text()))
    model, meta, ds = scoring_inputs(run / "last", [p for p in pairs if p.group == fold], fc,
                                     scoring={"correction_scale": 1.0})
    scheme = ds.scheme
    model.eval()
    k = scheme.num_classes
    cms = {c: torch.zeros(k, k, dtype=torch.int64) for c in itertools.product(LAMBDAS, TAUS)}
    window = int(meta.get("eval_window") or 128)
    with torch.no_grad():
        for i in range(len(ds.pairs)):
            img = torch.from_numpy(ds.images[i])
            model.correction_scale = 0.0
            base = predict_tile(model, img, window, ds.features[i], ds.strides)
            model.correction_scale = 1.0
            corr = predict_tile(model, img, window, ds.features[i], ds.strides) - base
            conf = torch.softmax(base, 0).max(0).values
            target = torch.from_numpy(ds.masks[i].astype(np.int64))
            for lam, tau in cms:
                gate = 1.0 if tau is None else (conf < tau).float()
                pred = (base + lam * corr * gate).argmax(0)
                cms[lam, tau] += confusion_matrix(pred, target, k, scheme.ignore_index)
    with open(out, "a") as fh:
        for (lam, tau), cm in cms.items():
            sc = scores(cm, list(scheme.classes)).as_dict()
            fh.write(json.dumps({"run": str(run), "held_out": fold, "lambda": lam, "tau": tau, "miou": sc["miou"],
                                 "iou": sc["iou"]}) + "\n")
    best = {c: round(100 * scores(cm, list(scheme.classes)).miou, 2) for c, cm in cms.items()}
    print(run, best, flush=True)
