"""BatchNorm statistics re-estimated on the scene being scored (AdaBN).

Why: a model fine-tuned on one or two scenes keeps, in every BatchNorm layer, the mean and variance
of *those* scenes' activations.  Another scene (another date, sun angle, roofing material) shifts
them, and a layer that normalises with the wrong statistics passes the shift on.  Li et al.
("Revisiting Batch Normalization for Practical Domain Adaptation", ICLR workshop 2017; Pattern
Recognition 2018) replace the statistics with those of the target domain's unlabelled images and
keep every learned weight.  The label-efficiency protocol already lets the DDPM see every scene's
unlabelled images (DDPM-Seg, §4); re-estimating the normalisation on the held-out scene's images
uses the same images and no label.

The statistics are gathered from random crops of the scoring tiles, in batches of the training
size, so each layer sees batches like those it was trained on; the model is put back as it was
(learned weights untouched, old statistics restored) when the ``with`` block ends.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..data.datasets import aligned_crop_d4, random_crop_d4


def batchnorms(model: nn.Module, within: str = "") -> list[_BatchNorm]:
    """The model's BatchNorm layers with running statistics, those under submodule ``within`` only
    when it is given (e.g. ``"backbone"``: HRNet's image path, not the DDPM-feature path)."""
    return [m for name, m in model.named_modules() if isinstance(m, _BatchNorm) and m.track_running_stats
            and (not within or name == within or name.startswith(within + "."))]


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, images: Sequence[np.ndarray], streams: Sequence[Sequence[torch.Tensor]] | None = None,
                         strides: Sequence[int] | None = None, crop: int = 96, batch_size: int = 4, batches: int = 50,
                         seed: int = 0, device: torch.device | str = "cpu", within: str = "") -> int:
    """Replace every BatchNorm's running statistics by their average over ``batches`` batches of
    ``batch_size`` random ``crop``² crops of ``images`` (normalised ``(C, H, W)`` arrays; with their
    whole-tile DDPM ``streams`` at ``strides`` for DDPM methods).  Other layers (dropout included)
    stay in eval mode; ``within``: see :func:`batchnorms`.  Returns the number of layers
    re-estimated (0: nothing to do)."""
    norms = batchnorms(model, within)
    if not norms or batches <= 0:
        return 0
    was_training = model.training
    model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches, not an exponential one
        m.train()
    rng = np.random.default_rng(seed)
    try:
        for _ in range(batches):
            ims, cuts = [], []
            for _ in range(batch_size):
                i = int(rng.integers(len(images)))
                im = images[i]
                blank = np.zeros(im.shape[-2:], np.uint8)  # no label is read: the crop needs a mask shape only
                if streams is not None:
                    x, _, s = aligned_crop_d4(rng, im, blank, streams[i], strides, crop, False, 255)
                    cuts.append(s)
                else:
                    x, _ = random_crop_d4(rng, [im, blank], crop, False, pad_values=[0.0, 255])
                ims.append(torch.from_numpy(np.ascontiguousarray(x)))
            batch = torch.stack(ims).to(device)
            feats = None if streams is None else [torch.stack([c[k] for c in cuts]).float().to(device)
                                                   for k in range(len(cuts[0]))]
            model(batch, feats)
    finally:
        for m, mom in zip(norms, momenta):
            m.momentum = mom
        model.train(was_training)
    return len(norms)


@contextmanager
def adapted_batchnorm(model: nn.Module, *args, **kwargs) -> Iterator[int]:
    """:func:`reestimate_batchnorm` for the ``with`` block only: the old statistics come back after,
    so scoring during training does not change the model being trained."""
    saved = [(m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in batchnorms(model, kwargs.get("within", ""))]
    try:
        yield reestimate_batchnorm(model, *args, **kwargs)
    finally:
        for m, mean, var, n in saved:
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(n)
