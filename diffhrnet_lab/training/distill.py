"""HRNet's image path started from the DDPM: feature distillation on the unlabelled pool.

Round 12 of BENCHMARKS.md: fine-tuned from scratch on one scene, HRNet's RGB path reads another
scene's colours as other classes, and the fused model's correction fails wholesale there.  The
pixel classifier does not, because the DDPM features it reads were learned from the images of
*every* scene.  Distillation hands that to HRNet before it sees a label: the backbone is trained to
predict the (frozen) DDPM's decoder features from the image alone, on unlabelled crops of all the
pool's images (the data the DDPM was pretrained on), and fine-tuning then starts from it
(``model.init_timm`` pointing at the saved file).  No label is used, so it is one more way of using
the DDPM, as the paper's method is.

The target is every stream of the feature keys (timesteps x blocks) at HRNet's 1/4 resolution,
standardised per channel with statistics of the cached tiles; the student is the backbone plus a
1x1 convolution from HRNetV2's concatenated branches; the loss is the mean squared error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.datasets import aligned_crop_d4
from ..data.io import read_tile
from ..errors import DataError
from ..fileio import atomic_dir, atomic_write_json, save_tensors
from ..models.hrnet import HRNetBackbone, concat_at_first
from .schedules import poly_with_warmup


@dataclass
class DistillConfig:
    """How long and on what: crops of ``crop`` pixels, ``batch`` per step, AdamW at ``lr`` with
    fine-tuning's poly schedule (warm-up ``warmup_steps``)."""

    steps: int = 600
    batch: int = 8
    crop: int = 96
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    seed: int = 0


class Student(nn.Module):
    """HRNet's backbone and a 1x1 convolution from its four branches (upsampled to 1/4 and
    concatenated, as HRNetV2's head reads them) to the DDPM streams' channels."""

    def __init__(self, variant: str, bands: int, out_channels: int):
        super().__init__()
        self.backbone = HRNetBackbone(variant, bands)
        self.proj = nn.Conv2d(sum(self.backbone.out_channels), out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(concat_at_first(self.backbone(x)))


def stream_stats(features: Sequence[Sequence[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of the streams, pooled to the coarsest one's size,
    over every cached tile (the targets are standardised with them)."""
    s1 = s2 = n = 0
    for streams in features:
        size = (min(f.shape[-2] for f in streams), min(f.shape[-1] for f in streams))
        flat = torch.cat(_pooled(streams, size), 0).flatten(1).double()
        s1, s2, n = s1 + flat.sum(1), s2 + (flat ** 2).sum(1), n + flat.shape[1]
    mean = s1 / n
    return mean.float(), (s2 / n - mean ** 2).clamp_min(1e-12).sqrt().float()


def _pooled(streams: Sequence[torch.Tensor], size: tuple[int, int]) -> list[torch.Tensor]:
    """Streams ``(C, h, w)`` average-pooled to ``size``."""
    return [F.adaptive_avg_pool2d(f.float()[None], size)[0] for f in streams]


def distill_backbone(images: Sequence[np.ndarray], features: Sequence[Sequence[torch.Tensor]], strides: Sequence[int],
                     out: str | Path, variant: str = "w18_small", cfg: DistillConfig | None = None,
                     progress: bool = True, meta: dict | None = None) -> dict:
    """Train a :class:`Student` on ``images`` (normalised, ``(C, H, W)``) to predict their cached
    DDPM ``features`` (one list of streams per image, at ``strides``); write the backbone's weights
    to ``out/backbone.safetensors`` (what ``model.init_timm`` loads) with ``out/distill.json``.
    Returns the summary (first and last losses)."""
    cfg = cfg or DistillConfig()
    if len(images) != len(features) or not images:
        raise DataError(f"distillation needs features for every image: {len(images)} image(s), {len(features)} feature set(s)")
    if any(s > 4 for s in strides):
        raise DataError(f"feature strides {list(strides)}: distillation targets HRNet's 1/4 branch and needs streams "
                        "at stride 4 or finer")
    torch.manual_seed(cfg.seed)
    mean, std = stream_stats(features)
    student = Student(variant, images[0].shape[0], mean.numel())
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    losses, t0 = [], time.time()
    student.train()
    for step in tqdm(range(cfg.steps), desc="distilling HRNet from the DDPM", disable=not progress):
        xs, ys = [], []
        for _ in range(cfg.batch):
            i = int(rng.integers(len(images)))
            dummy = np.zeros(images[i].shape[-2:], np.uint8)
            img, _, streams = aligned_crop_d4(rng, images[i], dummy, features[i], strides, cfg.crop, True, 255)
            xs.append(torch.from_numpy(img))
            ys.append(torch.cat(_pooled(streams, (cfg.crop // 4, cfg.crop // 4)), 0))
        target = (torch.stack(ys) - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
        for g in opt.param_groups:
            g["lr"] = poly_with_warmup(step, cfg.lr, cfg.warmup_steps, cfg.steps, 0.9)
        loss = F.mse_loss(student(torch.stack(xs)), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    summary = {"variant": variant, "steps": cfg.steps, "batch": cfg.batch, "crop": cfg.crop, "lr": cfg.lr,
               "images": len(images), "first_loss": float(np.mean(losses[:10])), "last_loss": float(np.mean(losses[-10:])),
               "seconds": round(time.time() - t0, 1), **(meta or {})}
    with atomic_dir(Path(out)) as tmp:
        save_tensors(tmp / "backbone.safetensors", student.backbone.state_dict())
        atomic_write_json(tmp / "distill.json", summary)
    return summary


def distill_from_folder(data: str | Path, ddpm: str | Path, out: str | Path, cache_dir: str | Path | None = None,
                        timesteps: Sequence[int] = (50, 150, 250), blocks: Sequence[int] = (0, 1), window: int = 128,
                        variant: str = "w18_small", cfg: DistillConfig | None = None, progress: bool = True) -> dict:
    """:func:`distill_backbone` on every image under ``data`` (labels unused), with the features of
    the DDPM bundle ``ddpm`` from the tile cache (computed and stored there when missing)."""
    from ..data.io import list_tiles
    from ..ddpm.unet import load_bundle
    from ..features.extractor import FeatureExtractor
    from ..features.tile_cache import tile_features

    root = Path(data)
    base = root / "images" if (root / "images").is_dir() else root
    paths = list_tiles(base)
    if not paths:
        raise DataError(f"{root}: no images to distil on")
    bundle = load_bundle(ddpm)
    fx = FeatureExtractor.from_bundle(bundle, tuple(timesteps), tuple(blocks))
    fx.cache_dir = Path(cache_dir) if cache_dir else None
    images = [bundle.stats.normalise(read_tile(p, expected_bands=bundle.bands).image, str(p)) for p in paths]
    ids = [p.relative_to(base).with_suffix("").as_posix() for p in paths]
    feats = tile_features(fx, [(i, torch.from_numpy(im)) for i, im in zip(ids, images)], window=window, progress=progress)
    strides = [fx.info[b]["stride"] for _, b in fx.keys]
    return distill_backbone(images, feats, strides, out, variant, cfg, progress,
                            meta={"ddpm": str(ddpm), "timesteps": list(timesteps), "blocks": list(blocks), "data": str(data)})
