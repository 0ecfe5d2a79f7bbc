"""Self-training: a trained teacher labels the training scenes the label budget left out.

Why: with one or two labelled scenes, what HRNet learns from the image fits those scenes and errs
alike on any other (BENCHMARKS.md, screening rounds 5-18).  The DDPM is pretrained on every
scene without labels, the paper's premise; fine-tuning saw only the labelled ones.  Here a
finished run (the *teacher*) predicts the other training scenes' tiles; pixels where its softmax
falls below ``train.pseudo_threshold`` are ignored (the confidence cut of FixMatch, Sohn et al.
2020), and ``train.pseudo_class_fraction`` keeps only each class's surest share (CBST, Zou et
al. 2018).  A fresh model (the *student*) then trains on the labelled and the pseudo-labelled
tiles together.  Screened in rounds 19 and 19b of BENCHMARKS.md: neither student reached the
pixel classifier.

The unlabelled pairs lose their mask paths *before* anything reads them, so a stored label of a
scene outside the budget cannot reach training; the held-out scene is never among them, since
``train_val_pairs`` has already set it apart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.datasets import Pair
from ..errors import ConfigError, DataError
from ..fileio import atomic_save_tensors, atomic_write_json, load_tensors
from ..models.segmenters import finished_checkpoint

PSEUDO_FILE = "pseudo_labels.safetensors"


def teacher_checkpoint(teacher: str | Path) -> Path:
    """A teacher given as a run folder (its ``last/``) or as a checkpoint folder itself."""
    return finished_checkpoint(teacher, "teacher", "train the teacher first")


def unlabelled_pairs(candidates: Sequence[Pair], labelled: Sequence[Pair]) -> list[Pair]:
    """The candidates of the scenes not in ``labelled``, their mask paths dropped."""
    kept = {p.group for p in labelled}
    return [dataclasses.replace(p, mask=None) for p in candidates if p.group not in kept]


@torch.no_grad()
def pseudo_labels(teacher: str | Path, pairs: Sequence[Pair], features, threshold: float, scheme: str,
                  window: int | None = None, device: str | torch.device = "cpu", progress: bool = False,
                  class_fraction: float = 0.0) -> tuple[list[np.ndarray], float]:
    """The teacher's class per pixel of each unlabelled tile (uint8), ``ignore_index`` where its
    softmax probability is below ``threshold``; and the fraction of pixels kept.  Tiles are
    predicted in windows with their cached features, as the teacher was scored.

    ``class_fraction`` > 0: also, per class, only the most confident ``class_fraction`` of the
    pixels predicted as that class (over all tiles) are kept: class-balanced self-training (CBST,
    Zou et al., ECCV 2018), since one global cut keeps the classes a teacher is surest of (water)
    and drops the rest."""
    from ..inference.evaluate import predict_tile, scoring_inputs

    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"train.pseudo_threshold {threshold} outside [0, 1]")
    if not 0.0 <= class_fraction <= 1.0:
        raise ConfigError(f"train.pseudo_class_fraction {class_fraction} outside [0, 1]")
    if any(p.mask is not None for p in pairs):
        raise DataError("pseudo-labels are for tiles whose labels are not read: drop their mask paths first")
    ckpt = teacher_checkpoint(teacher)
    model, meta, ds = scoring_inputs(ckpt, pairs, features, unlabelled=True)
    if meta["scheme"] != scheme:
        raise ConfigError(f"teacher {ckpt} was trained on label scheme '{meta['scheme']}', this run uses '{scheme}'")
    dev = torch.device(device)
    model.to(dev).eval()
    window = window or int(meta.get("eval_window") or 128)
    classes, confidences = [], []
    for i in tqdm(range(len(ds.pairs)), desc="pseudo-labelling", disable=not progress, leave=False):
        streams = ds.features[i] if ds.features is not None else None
        logits = predict_tile(model, torch.from_numpy(ds.images[i]).to(dev), window, streams, ds.strides)
        classes.append(logits.argmax(0).to(torch.uint8).cpu().numpy())  # the class scoring picks (a softmax
        confidences.append(logits.float().softmax(0).amax(0).cpu().numpy())  # can round two near logits to a tie)
    cut = np.full(ds.scheme.num_classes, threshold, dtype=np.float64)
    if class_fraction > 0:
        for c in range(ds.scheme.num_classes):
            conf_c = np.concatenate([f[k == c] for k, f in zip(classes, confidences)])
            if conf_c.size:
                cut[c] = max(threshold, float(np.quantile(conf_c, 1.0 - class_fraction)))
    masks, kept, total = [], 0, 0
    for k, f in zip(classes, confidences):
        sure = f >= cut[k]
        masks.append(np.where(sure, k, ds.scheme.ignore_index).astype(np.uint8))
        kept, total = kept + int(sure.sum()), total + sure.size
    return masks, kept / max(total, 1)


def _identity(ckpt: Path, threshold: float, class_fraction: float, pairs: Sequence[Pair]) -> dict:
    weights = hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()
    return {"teacher": str(ckpt), "teacher_sha256": weights, "threshold": threshold, "class_fraction": class_fraction,
            "tiles": [p.id for p in pairs]}


def load_or_make(out: Path, teacher: str | Path, pairs: Sequence[Pair], features, threshold: float, scheme: str,
                 window: int | None, device, progress: bool, write: bool = True,
                 class_fraction: float = 0.0) -> tuple[list[np.ndarray], float]:
    """:func:`pseudo_labels`, kept in ``out`` so that a resumed run trains on the very labels it
    started with; kept labels of another teacher, threshold or tile list are refused."""
    ckpt = teacher_checkpoint(teacher)
    ident = _identity(ckpt, threshold, class_fraction, pairs)
    meta_file, data_file = out / "pseudo_labels.json", out / PSEUDO_FILE
    if meta_file.is_file() and data_file.is_file():
        kept = json.loads(meta_file.read_text())
        if {k: kept.get(k, 0.0 if k == "class_fraction" else None) for k in ident} != ident:
            raise ConfigError(f"{out}: its pseudo-labels came from another teacher, threshold or tile list "
                              f"({kept.get('teacher')}, {kept.get('threshold')}); use another output folder")
        stored = load_tensors(data_file)
        return [stored[f"mask_{i}"].numpy() for i in range(len(pairs))], float(kept["kept"])
    masks, frac = pseudo_labels(ckpt, pairs, features, threshold, scheme, window, device, progress, class_fraction)
    if write:
        atomic_save_tensors(data_file, {f"mask_{i}": torch.from_numpy(m) for i, m in enumerate(masks)})
        atomic_write_json(meta_file, {**ident, "kept": frac})
    return masks, frac
