"""Pilot (BENCHMARKS.md, before round 12): D4 test-time augmentation on seed-10 screening checkpoints.

    python benchmarks/tta_pilot.py VIEWS OUT.jsonl FOLD:METHOD:BUDGET [...]
"""
import json, sys, time
from pathlib import Path
import torch
from diffhrnet_lab.data.datasets import find_pairs
from diffhrnet_lab.models.segmenters import saved_features
import diffhrnet_lab.inference.evaluate as ev

VIEWS = [(k, f) for f in (False, True) for k in range(4)]

def tf(t, k, f):
    t = torch.rot90(t, k, dims=(-2, -1))
    return t.flip(-1) if f else t

def inv(t, k, f):
    t = t.flip(-1) if f else t
    return torch.rot90(t, -k, dims=(-2, -1))

class D4(torch.nn.Module):
    def __init__(self, m, n):
        super().__init__(); self.m, self.n = m, n
    def forward(self, x, streams=None):
        out = 0
        for k, f in VIEWS[:self.n]:
            y = self.m(tf(x, k, f), None if streams is None else [tf(s, k, f) for s in streams])
            out = out + inv(y, k, f)
        return out / self.n

orig = ev.predict_tile
N = int(sys.argv[1])
def patched(model, image, window, streams=None, strides=None):
    return orig(D4(model, N) if N > 1 else model, image, window, streams, strides)
ev.predict_tile = patched
pairs = find_pairs("data_samples/dubai_aerial")
root, out = Path("runs/le_screen/runs"), sys.argv[2]
for spec in sys.argv[3:]:
    fold, method, budget = spec.split(":")
    run = root / fold / f"{method}_b{budget}_s10"
    fc = saved_features(json.loads((run / "last" / "model.json").read_text()))
    held = [p for p in pairs if p.group == fold]
    t = time.time()
    sc = ev.score_checkpoint(run / "last", held, fc, scoring={"correction_scale": 0.5} if method.startswith("ms_res") else None)[2].as_dict()
    row = {"run": str(run), "held_out": fold, "budget": int(budget), "method": method, "views": N, "miou": sc["miou"], "iou": sc["iou"], "s": round(time.time() - t)}
    open(out, "a").write(json.dumps(row) + "\n")
    print(fold, method, budget, N, f"{100*sc['miou']:.2f}", row["s"], "s", flush=True)
