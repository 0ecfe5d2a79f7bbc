"""Segmentation metrics from a confusion matrix: per-class IoU and F1, mIoU, overall accuracy.

Everything derives from one ``K x K`` confusion matrix accumulated over all pixels of all tiles
(rows: truth, columns: prediction), the protocol of mmsegmentation and the ISPRS benchmark: IoU is
computed over the dataset, not averaged per image.  Pixels whose truth is the ignore index count
nowhere.  A class absent from both truth and prediction has an undefined IoU (NaN) and is left
out of the mean rather than counted as 0 or 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..fileio import markdown_table


def pct(v: float) -> str:
    """A score in percent; NaN (class absent from truth and prediction) reads as 'absent'."""
    return "absent" if v != v else f"{100 * v:.1f}"


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """``(K, K)`` int64 counts; ``pred`` and ``target`` are class-index tensors of the same shape."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
    if t.numel() and (t.max() >= num_classes or t.min() < 0):
        raise ValueError(f"target has class {int(t.max())} outside 0..{num_classes - 1} (and is not the ignore index)")
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes).cpu()


@dataclass
class Scores:
    iou: list[float]
    f1: list[float]
    miou: float
    mf1: float
    oa: float
    classes: list[str]

    def as_dict(self) -> dict:
        return {"miou": self.miou, "mf1": self.mf1, "oa": self.oa,
                "iou": dict(zip(self.classes, self.iou)), "f1": dict(zip(self.classes, self.f1))}

    @classmethod
    def from_dict(cls, d: dict) -> "Scores":
        """The inverse of :meth:`as_dict` (e.g. a run's stored validation scores)."""
        classes = list(d["iou"])
        return cls(iou=[d["iou"][c] for c in classes], f1=[d["f1"][c] for c in classes], miou=d["miou"],
                   mf1=d["mf1"], oa=d["oa"], classes=classes)

    def table(self) -> str:
        rows = [[c, pct(i), pct(f)] for c, i, f in zip(self.classes, self.iou, self.f1)]
        rows.append(["**mean**", f"**{100 * self.miou:.1f}**", f"**{100 * self.mf1:.1f}**"])
        return markdown_table(["class", "IoU %", "F1 %"], rows) + f"\n\nOverall accuracy: {100 * self.oa:.1f} %"


def scores(cm: torch.Tensor | np.ndarray, classes: list[str] | None = None) -> Scores:
    """IoU = TP / (TP + FP + FN); F1 = 2TP / (2TP + FP + FN); OA = trace / total."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (tp + fp + fn)
        f1 = 2 * tp / (2 * tp + fp + fn)
    total = cm.sum()
    classes = classes or [str(i) for i in range(len(tp))]
    return Scores(iou=iou.tolist(), f1=f1.tolist(), miou=float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
                  mf1=float(np.nanmean(f1)) if np.isfinite(f1).any() else float("nan"),
                  oa=float(tp.sum() / total) if total else float("nan"), classes=classes)
