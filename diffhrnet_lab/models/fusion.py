"""Diff-HRNet: DDPM decoder features fused into HRNet's branches at chosen stages.

Wu et al. (GRSL 2024) state only that features of a DDPM pretrained on unlabelled imagery are fused
into HRNet at *multiple stages*, so that the high-resolution branch keeps the detail; how is ours
to choose, and every choice is a parameter here:

* **streams**: each (timestep t, decoder block b) feature map is one stream (DDPM-Seg, §3);
* **adapters**: per fusion point (stage s, branch i) and stream, a 1x1 conv + BN maps the stream to
  the branch's width and a resize brings it to the branch's resolution (1/4 ... 1/32);
* **operators**: ``concat`` (branch and adapted streams concatenated, 1x1 conv back to width),
  ``add`` (adapted streams summed onto the branch), ``gated`` (learned softmax weights over the
  streams, SatDiFuser-style global weighting, times a per-pixel sigmoid gate computed from the
  branch and the mixture: the network decides where diffusion features help);
* **stages**: ``()`` plain HRNet, ``(4,)`` late fusion (only the final branches, just before the
  head), ``(1, 2, 3, 4)`` multistage (after every stage: the paper's scheme), or any subset.

``add`` and ``gated`` start as the identity (their adapters' BN scales start at zero), so training
begins from plain HRNet and moves away only as far as the features help, the trick ControlNet's
zero convolutions use to graft new inputs onto a network safely.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from .hrnet import HRNetBackbone, HRNetV2Head

FUSION_OPS = ("concat", "add", "gated")
STAGE_PRESETS = {"none": (), "late": (4,), "multistage": (1, 2, 3, 4)}


def parse_stages(stages: str | Sequence[int]) -> tuple[int, ...]:
    if isinstance(stages, str):
        if stages in STAGE_PRESETS:
            return STAGE_PRESETS[stages]
        try:
            stages = [int(s) for s in stages.replace(",", " ").split()]
        except ValueError:
            raise ConfigError(f"fusion stages '{stages}': use none, late, multistage or numbers 1-4") from None
    out = tuple(sorted({int(s) for s in stages}))
    if any(s not in (1, 2, 3, 4) for s in out):
        raise ConfigError(f"fusion stages {out}: valid stages are 1, 2, 3, 4 (or none / late / multistage)")
    return out


class Adapter(nn.Module):
    """One stream → one branch: 1x1 conv + BN, resized to the branch (pool down before, upsample after)."""

    def __init__(self, cin: int, cout: int, zero_init: bool = False):
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        if zero_init:
            nn.init.zeros_(self.bn.weight)

    def forward(self, f: torch.Tensor, size: torch.Size) -> torch.Tensor:
        if f.shape[-2] > size[0]:
            f = F.adaptive_avg_pool2d(f, size)
        y = self.bn(self.proj(f))
        if y.shape[-2:] != size:
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return y


class FusionPoint(nn.Module):
    """Fuse all streams into one branch of width ``width`` with operator ``op``."""

    def __init__(self, op: str, width: int, stream_channels: Sequence[int]):
        super().__init__()
        if op not in FUSION_OPS:
            raise ConfigError(f"unknown fusion operator '{op}'; choose one of {', '.join(FUSION_OPS)}")
        self.op = op
        m = len(stream_channels)
        self.adapters = nn.ModuleList(Adapter(c, width, zero_init=(op != "concat")) for c in stream_channels)
        if op == "concat":
            self.mix = nn.Sequential(nn.Conv2d(width * (m + 1), width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        elif op == "gated":
            self.stream_logits = nn.Parameter(torch.zeros(m))
            self.gate = nn.Conv2d(2 * width, width, 1)
            nn.init.zeros_(self.gate.weight)
            nn.init.zeros_(self.gate.bias)  # gate 0.5 everywhere until it learns where features help

    def stream_weights(self) -> torch.Tensor:
        return torch.softmax(self.stream_logits, 0) if self.op == "gated" else torch.full((len(self.adapters),), 1.0)

    def forward(self, x: torch.Tensor, streams: Sequence[torch.Tensor]) -> torch.Tensor:
        size = x.shape[-2:]
        adapted = [a(s, size) for a, s in zip(self.adapters, streams)]
        if self.op == "concat":
            return self.mix(torch.cat([x, *adapted], 1))
        if self.op == "add":
            return x + torch.stack(adapted).sum(0)
        w = self.stream_weights()
        mixed = sum(wi * a for wi, a in zip(w, adapted))
        return x + torch.sigmoid(self.gate(torch.cat([x, mixed], 1))) * mixed


def pad_to(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
    return x, h, w


class DiffHRNet(nn.Module):
    """HRNetV2 with DDPM features fused at ``stages``; with no stages (or no extractor) it is plain HRNet.

    ``extractor`` is a :class:`~diffhrnet_lab.ddpm.features.FeatureExtractor`; its U-Net becomes the
    submodule ``ddpm`` (frozen unless ``finetune_ddpm``).  Inputs of any size: padded to a multiple
    of 32 and the logits cropped back.
    """

    def __init__(self, num_classes: int, in_channels: int, variant: str = "w18_small", extractor=None,
                 stages: str | Sequence[int] = "multistage", fusion: str = "gated", finetune_ddpm: bool = False,
                 head_dropout: float = 0.1):
        super().__init__()
        self.stages = parse_stages(stages) if extractor is not None else ()
        self.backbone = HRNetBackbone(variant, in_channels)
        self.head = HRNetV2Head(self.backbone.out_channels, num_classes, dropout=head_dropout)
        self.extractor = extractor
        self.finetune_ddpm = finetune_ddpm
        self.fusion_op = fusion
        self.points = nn.ModuleDict()
        if self.stages:
            self.ddpm = extractor.unet
            self.ddpm.requires_grad_(finetune_ddpm)
            chans = [extractor.channels()[k] for k in extractor.keys]
            for s in self.stages:
                for i, width in enumerate(self.backbone.stage_channels[s - 1]):
                    self.points[f"s{s}b{i}"] = FusionPoint(fusion, width, chans)

    def ddpm_streams(self, x: torch.Tensor) -> list[torch.Tensor]:
        assert self.extractor is not None
        with torch.set_grad_enabled(self.finetune_ddpm and torch.is_grad_enabled()):
            feats = self.extractor.compute(x)
        return [feats[k] for k in self.extractor.keys]

    def cached_streams(self, streams: Sequence[torch.Tensor], padded: torch.Size) -> list[torch.Tensor]:
        """Precomputed streams (the feature cache), padded like the input was to a multiple of 32."""
        out = []
        for (t, b), f in zip(self.extractor.keys, streams):
            s = self.extractor.info[b]["stride"]
            ph, pw = padded[0] // s - f.shape[-2], padded[1] // s - f.shape[-1]
            out.append(F.pad(f.float(), (0, pw, 0, ph), mode="replicate") if ph > 0 or pw > 0 else f.float())
        return out

    def forward(self, x: torch.Tensor, streams: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """``streams``: the extractor's features of ``x`` computed beforehand (one per key, at block
        resolution); without them they are computed here."""
        xp, h, w = pad_to(x, 32)
        fuse = None
        if self.stages:
            streams = self.ddpm_streams(xp) if streams is None else self.cached_streams(streams, xp.shape[-2:])

            def fuse(stage: int, branches: list[torch.Tensor]) -> list[torch.Tensor]:
                if stage not in self.stages:
                    return branches
                return [self.points[f"s{stage}b{i}"](b, streams) for i, b in enumerate(branches)]

        logits = self.head(self.backbone(xp, fuse))
        logits = F.interpolate(logits, size=xp.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :h, :w]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights to checkpoint: all but a frozen DDPM (that is referenced by hash instead)."""
        sd = self.state_dict()
        if not self.finetune_ddpm:
            sd = {k: v for k, v in sd.items() if not k.startswith("ddpm.")}
        return sd


class DDPMPixelClassifier(nn.Module):
    """DDPM-Seg's baseline: per-pixel MLP on DDPM features upsampled to the input size.

    Baranchuk et al. train an ensemble of MLPs (Linear 128 → ReLU → BN → Linear 32 → ReLU → BN →
    Linear K) on every pixel's concatenated features; 1x1 convolutions are the same MLP applied to
    all pixels at once.  No HRNet: it shows what the diffusion features alone can do.
    """

    def __init__(self, num_classes: int, extractor, finetune_ddpm: bool = False):
        super().__init__()
        self.extractor = extractor
        self.ddpm = extractor.unet
        self.finetune_ddpm = finetune_ddpm
        self.ddpm.requires_grad_(finetune_ddpm)
        cin = sum(extractor.channels().values())
        self.mlp = nn.Sequential(
            nn.Conv2d(cin, 128, 1), nn.ReLU(inplace=True), nn.BatchNorm2d(128),
            nn.Conv2d(128, 32, 1), nn.ReLU(inplace=True), nn.BatchNorm2d(32),
            nn.Conv2d(32, num_classes, 1),
        )
        self.stages = ()

    def forward(self, x: torch.Tensor, streams: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        if streams is None:
            with torch.set_grad_enabled(self.finetune_ddpm and torch.is_grad_enabled()):
                feats = self.extractor.compute(x)
            streams = [feats[k] for k in self.extractor.keys]
        size = x.shape[-2:]
        up = [F.interpolate(f.float(), size=size, mode="bilinear", align_corners=False) for f in streams]
        return self.mlp(torch.cat(up, 1))

    trainable_state_dict = DiffHRNet.trainable_state_dict
