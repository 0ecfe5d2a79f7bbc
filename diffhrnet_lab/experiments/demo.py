"""``make demo``: the main job on the embedded samples.

1. check that ``data_samples/`` is exactly what the generator makes, and draw tiles beside masks;
2. fine-tune HRNet-only and Diff-HRNet (multistage fusion of the embedded tiny DDPM's features)
   with the same data, seed and schedule;
3. evaluate both on the held-out scenes by sliding window over whole tiles;
4. write ``report.md`` with predictions beside ground truth, per-class IoU, both mIoUs side by side
   and the training curves.

Each run resumes from its checkpoints, so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from ..config import embedded_ddpm_dir, profile_config, replace, samples_dir
from ..data.datasets import find_pairs
from ..data.io import BandStats, read_mask, read_tile
from ..data.labels import SAMPLES
from ..data.samples import generate_samples, verify_samples
from ..errors import DataError
from ..inference.metrics import pct
from ..fileio import atomic_write_text, check_writable, markdown_table
from ..explore.viz import plot_curves, plot_iou_bars, plot_miou, plot_predictions, plot_tiles_and_masks, save_figure

from .methods import label, method_model

DEMO_METHODS = ("hrnet", "diffhrnet")


def run_demo(out_dir: str | Path = "runs/demo", data_dir: str | Path | None = None, profile: str | None = None,
             progress: bool = True) -> Path:
    t_start = time.time()
    out = check_writable(out_dir)
    data = Path(data_dir) if data_dir else samples_dir()
    if not (data / "manifest.json").exists():
        print(f"[demo] {data} has no samples yet: generating them")
        generate_samples(data)
    problems = verify_samples(data)
    if problems:
        raise DataError("embedded samples differ from the generator's output:\n  " + "\n  ".join(problems[:10])
                        + "\nRegenerate them with: diffhrnet-lab samples --out " + str(data))
    print(f"[demo] {data}: samples verified against the generator")
    pairs = find_pairs(data / "labelled")
    images = [read_tile(p.image).image for p in pairs]
    masks = [read_mask(p.mask, SAMPLES) for p in pairs]
    save_figure(plot_tiles_and_masks(images, masks, SAMPLES, titles=[p.id for p in pairs], cols=5), out / "samples.png")
    if not (embedded_ddpm_dir() / "ddpm.json").exists():
        raise DataError(f"{embedded_ddpm_dir()}: the embedded DDPM is missing; make it with "
                        "`diffhrnet-lab pretrain --profile quick --out runs/ddpm_tiny --export data_samples/ddpm_tiny --export-half`")

    from ..training.finetune import finetune
    from ..inference.evaluate import validate
    from ..data.datasets import LabelledTiles

    base = profile_config(profile)
    base.data = replace(base.data, root=str(data / "labelled"))
    summaries, models = {}, {}
    for key in DEMO_METHODS:
        name = label(key)
        cfg = dataclasses.replace(base, model=method_model(base.model, key))
        run = out / key
        print(f"[demo] fine-tuning {name} ({base.name} profile) → {run}")
        summaries[name] = finetune(cfg, run, resume="latest", progress=progress)
        models[name] = run / "best"

    from ..models.segmenters import load_segmenter

    val_groups = summaries["HRNet"]["val_groups"]
    val_pairs = [p for p in pairs if p.group in val_groups]
    preds, scores_by = {}, {}
    for name, ckpt in models.items():
        model, meta = load_segmenter(ckpt)
        ds = LabelledTiles(val_pairs, SAMPLES, stats=BandStats.from_dict(meta["stats"]))
        from ..inference.metrics import scores as to_scores

        cm, p = validate(model, ds, base.train.eval_window, torch.device("cpu"))
        preds[name], scores_by[name] = p, to_scores(cm, list(SAMPLES.classes))
    val_images = [images[pairs.index(p)] for p in val_pairs]
    val_masks = [masks[pairs.index(p)] for p in val_pairs]
    save_figure(plot_predictions(val_images, val_masks, preds, SAMPLES, titles=[p.id for p in val_pairs]), out / "predictions.png")
    save_figure(plot_iou_bars({n: dict(zip(s.classes, s.iou)) for n, s in scores_by.items()}), out / "iou.png")
    save_figure(plot_miou({n: s.miou for n, s in scores_by.items()}), out / "miou.png")
    save_figure(plot_curves({n: s["history"] for n, s in summaries.items()}), out / "curves.png")
    result = {n: s.as_dict() for n, s in scores_by.items()}
    result["profile"] = base.name
    result["val_groups"] = val_groups
    result["wall_s"] = round(time.time() - t_start, 1)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    atomic_write_text(out / "report.md", _report(base.name, pairs, val_groups, scores_by, summaries, result["wall_s"]))
    print("[demo] " + "  ".join(f"{n}: mIoU {100 * s.miou:.1f} %" for n, s in scores_by.items()))
    print(f"[demo] report: {out / 'report.md'}")
    return out / "report.md"


def _report(profile, pairs, val_groups, scores_by, summaries, wall_s) -> str:
    names = list(scores_by)
    lines = [
        "# diffhrnet_lab demo report", "",
        f"Profile **{profile}**; {len(pairs)} labelled sample scenes, validation on whole held-out scenes "
        f"{', '.join(val_groups)} (sliding window); same data, seed and schedule for every method. "
        f"Wall time {wall_s:.0f} s.", "",
        markdown_table(["method", "mIoU %", "mF1 %", "OA %", "best step"],
                       [[n, f"{100 * scores_by[n].miou:.1f}", f"{100 * scores_by[n].mf1:.1f}", f"{100 * scores_by[n].oa:.1f}",
                         summaries[n]["best_step"]] for n in names]),
    ]
    lines += ["", "![mIoU side by side](miou.png)", "", "## Per-class IoU", "",
              markdown_table(["class", *names], [[c, *(pct(scores_by[n].iou[i]) for n in names)]
                                                 for i, c in enumerate(scores_by[names[0]].classes)])]
    lines += ["", "![per-class IoU](iou.png)", "", "## Predictions beside ground truth", "",
              "![predictions](predictions.png)", "", "## Training", "", "![curves](curves.png)", "",
              "## The embedded samples", "", "![tiles and masks](samples.png)", ""]
    if profile == "smoke":
        lines.insert(4, "> Smoke profile: a few steps only; the numbers show the pipeline runs, not what the method does.\n")
    return "\n".join(lines)
