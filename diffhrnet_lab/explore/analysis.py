"""Looking inside DDPM features: PCA colour maps, k-means clusters and linear probes per (t, block).

These answer the teaching question of DDPM-Seg (Baranchuk et al. 2022, Fig. 2-3): *which timesteps
and decoder blocks carry semantics?*  A linear probe (one 1x1 convolution, i.e. per-pixel logistic
regression) trained on a single (t, block) stream measures how linearly separable the classes are
in it: a high probe mIoU means the DDPM has organised that stream by land-cover class, without
ever seeing a label.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..features.extractor import FeatureExtractor, FeatureKey
from ..inference.metrics import Scores, confusion_matrix, scores


def pca_rgb(feat: torch.Tensor, basis: torch.Tensor | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """``(C, h, w)`` features → ``(h, w, 3)`` colours from their first three principal components.

    Returns the picture and the projection basis; pass the basis back to colour other tiles
    consistently (the same colour then means the same feature direction on every tile).
    """
    c, h, w = feat.shape
    x = feat.reshape(c, -1).T.float()
    mean = x.mean(0, keepdim=True)
    if basis is None:
        _, _, v = torch.linalg.svd(x - mean, full_matrices=False)
        basis = v[:3].T
    y = (x - mean) @ basis
    lo, hi = torch.quantile(y, 0.01, dim=0), torch.quantile(y, 0.99, dim=0)
    y = ((y - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
    return y.reshape(h, w, 3).numpy(), basis


def kmeans(feat: torch.Tensor, k: int = 6, iters: int = 20, seed: int = 0) -> np.ndarray:
    """Cluster the pixels of ``(C, h, w)`` features into ``k`` groups (cosine k-means); returns ``(h, w)``."""
    c, h, w = feat.shape
    x = F.normalize(feat.reshape(c, -1).T.float(), dim=1)
    g = torch.Generator().manual_seed(seed)
    centres = x[torch.randperm(x.shape[0], generator=g)[:k]].clone()
    for _ in range(iters):
        assign = (x @ centres.T).argmax(1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                centres[j] = F.normalize(members.mean(0), dim=0)
    return (x @ centres.T).argmax(1).reshape(h, w).numpy()


def _pixels(feats: dict[FeatureKey, torch.Tensor], mask: torch.Tensor, n: int, ignore: int, gen) -> tuple[dict, torch.Tensor]:
    """A random sample of labelled pixels: features upsampled to the mask, then indexed."""
    h, w = mask.shape
    valid = torch.nonzero(mask.reshape(-1) != ignore).squeeze(1)
    pick = valid[torch.randperm(len(valid), generator=gen)[:n]]
    out = {}
    for key, f in feats.items():
        up = F.interpolate(f[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        out[key] = up.reshape(up.shape[0], -1)[:, pick].T
    return out, mask.reshape(-1)[pick]


def linear_probe(extractor: FeatureExtractor, train: Sequence[dict], val: Sequence[dict], num_classes: int,
                 ignore_index: int = 255, pixels_per_tile: int = 4096, epochs: int = 60, seed: int = 0,
                 progress: bool = False, per_class: bool = False,
                 classes: Sequence[str] | None = None) -> dict[FeatureKey, float] | dict[FeatureKey, Scores]:
    """Validation mIoU of a per-pixel linear classifier trained on each (t, block) stream alone.

    ``train`` / ``val`` are dataset items (``image`` normalised ``(C, H, W)``, ``mask``).  Training
    uses a random sample of labelled pixels per tile (the DDPM-Seg protocol, which trains on pixels,
    not images); validation predicts every pixel of the validation tiles.  ``per_class``: each
    stream's full :class:`~diffhrnet_lab.inference.metrics.Scores` (per-class IoU and F1, named by
    ``classes``) instead of its mIoU alone, to ask which stream finds the small classes.
    """
    gen = torch.Generator().manual_seed(seed)
    xs: dict[FeatureKey, list[torch.Tensor]] = {k: [] for k in extractor.keys}
    ys = []
    for item in tqdm(train, desc="probe features", disable=not progress, leave=False):
        feats = {k: v[0] for k, v in extractor(item["image"][None]).items()}
        px, y = _pixels(feats, item["mask"], pixels_per_tile, ignore_index, gen)
        for k in xs:
            xs[k].append(px[k])
        ys.append(y)
    y_train = torch.cat(ys)
    val_feats = [({k: v[0] for k, v in extractor(item["image"][None]).items()}, item["mask"]) for item in val]
    result: dict[FeatureKey, float] = {}
    for key in tqdm(extractor.keys, desc="linear probes", disable=not progress, leave=False):
        x = torch.cat(xs[key])
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
        torch.manual_seed(seed)
        clf = torch.nn.Linear(x.shape[1], num_classes)
        opt = torch.optim.Adam(clf.parameters(), lr=1e-2)
        xn = (x - mean) / std
        for _ in range(epochs):
            opt.zero_grad()
            F.cross_entropy(clf(xn), y_train).backward()
            opt.step()
        cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        with torch.no_grad():
            for feats, mask in val_feats:
                f = F.interpolate(feats[key][None], size=mask.shape, mode="bilinear", align_corners=False)[0]
                logits = clf(((f.reshape(f.shape[0], -1).T) - mean) / std)
                cm += confusion_matrix(logits.argmax(1), mask.reshape(-1), num_classes, ignore_index)
        result[key] = scores(cm, list(classes) if classes else None) if per_class else scores(cm).miou
    return result
