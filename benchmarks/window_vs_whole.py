"""Windowed against whole-tile scoring of the same trained models on the same real tiles (issue 15, item 5).

Every evaluation path scores tiles in overlapping windows so that memory does not grow with the tile;
this checks what that costs in accuracy.  For each run folder given (label-efficiency runs, which keep
``last/``), its validation (held-out) scene is scored with the run's own window (``train.eval_window``) and with the
whole tile in one forward pass, on the same cached DDPM features; it prints one JSON line per run and
the largest difference in mIoU points.

    python benchmarks/window_vs_whole.py runs/le_screen/runs/Tile_1/*_b1_s10
    python benchmarks/window_vs_whole.py --correction-scale 0.5 runs/le_screen/runs/Tile_4/ms_res_b2_s10
"""

import json
import sys
from pathlib import Path

import torch

from diffhrnet_lab.data.datasets import LabelledTiles, find_pairs
from diffhrnet_lab.data.io import BandStats
from diffhrnet_lab.features.tile_cache import tile_features
from diffhrnet_lab.inference.evaluate import validate
from diffhrnet_lab.inference.metrics import scores
from diffhrnet_lab.models.segmenters import load_segmenter, saved_features


def compare(run: Path, scoring: dict | None = None) -> dict:
    model, meta = load_segmenter(run / "last", scoring=scoring)
    pairs = [p for p in find_pairs(meta["data"]["root"]) if p.group in meta["data"]["val_groups"]]
    ds = LabelledTiles(pairs, meta["scheme"], BandStats.from_dict(meta["stats"]))
    if meta["model"]["method"] != "hrnet":
        fc = saved_features(meta)
        fx = model.extractor
        fx.cache_dir = Path(fc.cache_dir) if fc.cache_dir else None
        ds.attach_features(tile_features(fx, [(p.id, torch.from_numpy(im)) for p, im in zip(ds.pairs, ds.images)],
                                         window=fc.cache_window, progress=False, dtype=fc.cache_dtype),
                           [fx.info[b]["stride"] for _, b in fx.keys])
    window = int(meta["eval_window"])
    row = {"run": str(run), "method": meta["model"]["method"], "scene": meta["data"]["val_groups"], "window": window,
           "correction_scale": meta["model"].get("correction_scale")}
    with torch.no_grad():
        for w in (window, 0):
            cm, _ = validate(model, ds, w, torch.device("cpu"))
            row[f"miou_window_{w}"] = round(100 * scores(cm).miou, 3)
    row["diff_points"] = round(row[f"miou_window_{window}"] - row["miou_window_0"], 3)
    return row


if __name__ == "__main__":
    args = sys.argv[1:]
    scoring = None
    if args[:1] == ["--correction-scale"]:  # the residual Diff-HRNet scored with another share of its correction
        scoring, args = {"correction_scale": float(args[1])}, args[2:]
    rows = [compare(Path(r), scoring) for r in args]
    for r in rows:
        print(json.dumps(r), flush=True)
    print(json.dumps({"runs": len(rows), "max_abs_diff_points": max(abs(r["diff_points"]) for r in rows)}))
