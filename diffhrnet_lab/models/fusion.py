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
    """One stream → one branch: 1x1 conv + BN, upsampled to the branch when coarser (a finer stream
    arrives already pooled to the branch: :class:`PooledStreams`)."""

    def __init__(self, cin: int, cout: int, zero_init: bool = False):
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        if zero_init:
            nn.init.zeros_(self.bn.weight)

    def forward(self, f: torch.Tensor, size: torch.Size) -> torch.Tensor:
        y = self.bn(self.proj(f))
        if y.shape[-2:] != size:
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return y


class FusionPoint(nn.Module):
    """Fuse all streams into one branch of width ``width`` with operator ``op``."""

    def __init__(self, op: str, width: int, stream_channels: Sequence[int], identity_start: bool = True):
        """``identity_start``: ``add`` and ``gated`` start as the identity on the branch (adapters'
        BN scale 0).  Off when the branch carries nothing (HRNet given no image,
        ``model.rgb_dropout=1``): zero adapters on a zero branch, under a zero-initialised
        classifier, would give every fused layer a zero gradient for ever."""
        super().__init__()
        if op not in FUSION_OPS:
            raise ConfigError(f"unknown fusion operator '{op}'; choose one of {', '.join(FUSION_OPS)}")
        self.op = op
        m = len(stream_channels)
        self.adapters = nn.ModuleList(Adapter(c, width, zero_init=(op != "concat" and identity_start))
                                      for c in stream_channels)
        if op == "concat":
            self.mix = nn.Sequential(nn.Conv2d(width * (m + 1), width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        elif op == "gated":
            self.stream_logits = nn.Parameter(torch.zeros(m))
            self.gate = nn.Conv2d(2 * width, width, 1)
            nn.init.zeros_(self.gate.weight)
            nn.init.zeros_(self.gate.bias)  # gate 0.5 everywhere until it learns where features help

    def stream_weights(self) -> torch.Tensor:
        return torch.softmax(self.stream_logits, 0) if self.op == "gated" else torch.full((len(self.adapters),), 1.0)

    def forward(self, x: torch.Tensor, streams: "Sequence[torch.Tensor] | PooledStreams") -> torch.Tensor:
        size = x.shape[-2:]
        adapted = [a(s, size) for a, s in zip(self.adapters, PooledStreams.of(streams).at(size))]
        if self.op == "concat":
            return self.mix(torch.cat([x, *adapted], 1))
        if self.op == "add":
            return x + torch.stack(adapted).sum(0)
        w = self.stream_weights()
        mixed = sum(wi * a for wi, a in zip(w, adapted))
        return x + torch.sigmoid(self.gate(torch.cat([x, mixed], 1))) * mixed


class PooledStreams:
    """The streams average-pooled to each branch resolution once per forward pass.

    Multistage fusion has a fusion point per (stage, branch), and stages 2-4 repeat branch 1's
    resolution, stages 3-4 branch 2's: each adapter pooling its own copy pooled every stream to the
    same size up to four times (48 pools per forward with the default streams, against 21 distinct
    ones).  The same operation on the same input, so the outputs are unchanged bit for bit."""

    def __init__(self, streams: Sequence[torch.Tensor]):
        self.streams = list(streams)
        self._at: dict[tuple[int, int], list[torch.Tensor]] = {}

    @classmethod
    def of(cls, streams: "Sequence[torch.Tensor] | PooledStreams") -> "PooledStreams":
        return streams if isinstance(streams, cls) else cls(streams)

    def at(self, size: torch.Size) -> list[torch.Tensor]:
        key = (int(size[0]), int(size[1]))
        if key not in self._at:
            self._at[key] = [F.adaptive_avg_pool2d(f, key) if f.shape[-2] > key[0] else f for f in self.streams]
        return self._at[key]


class StreamNorm(nn.Module):
    """Standardise every stream per channel before anything mixes them.

    DDPM activations differ in scale by orders of magnitude between timesteps and blocks; every work
    that fuses them (SatDiFuser, ODISE, Diffusion Hyperfeatures: GroupNorm bottlenecks) normalises
    each stream first.  A BatchNorm without affine parameters does it with statistics gathered from
    the training crops (running mean and variance at inference), so nothing extra is stored.
    """

    def __init__(self, stream_channels: Sequence[int]):
        super().__init__()
        self.norms = nn.ModuleList(nn.BatchNorm2d(c, affine=False) for c in stream_channels)

    def forward(self, streams: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [n(s) for n, s in zip(self.norms, streams)]


class HeadStreams(nn.Module):
    """The streams as extra inputs of the segmentation head: each projected to ``width`` channels
    (1x1 conv + BN + ReLU) and resized to the head's resolution (1/4).  The head's own 1x1 mix then
    sees DDPM features and HRNet's high-resolution branch side by side, where the paper's
    high-resolution argument says detail and semantics should meet."""

    def __init__(self, stream_channels: Sequence[int], width: int = 32):
        super().__init__()
        self.width = width * len(stream_channels)
        self.proj = nn.ModuleList(nn.Sequential(nn.Conv2d(c, width, 1, bias=False), nn.BatchNorm2d(width),
                                                nn.ReLU(inplace=True)) for c in stream_channels)

    def forward(self, streams: "Sequence[torch.Tensor] | PooledStreams", size: torch.Size) -> torch.Tensor:
        out = []
        for p, s in zip(self.proj, PooledStreams.of(streams).at(size)):
            y = p(s)
            out.append(F.interpolate(y, size=size, mode="bilinear", align_corners=False) if y.shape[-2:] != size else y)
        return torch.cat(out, 1)


def upsampled(streams: Sequence[torch.Tensor], size: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """All streams resized to ``size`` and concatenated: the per-pixel vector a pixel classifier reads."""
    return torch.cat([F.interpolate(f.to(dtype), size=size, mode="bilinear", align_corners=False) for f in streams], 1)


class PixelMLP(nn.Sequential):
    """DDPM-Seg's pixel classifier (Baranchuk et al. 2022, §3.2: Linear 128 → ReLU → BN → Linear 32
    → ReLU → BN → Linear K) as 1x1 convolutions, i.e. the same MLP applied to every pixel at once."""

    def __init__(self, cin: int, num_classes: int):
        super().__init__(
            nn.Conv2d(cin, 128, 1), nn.ReLU(inplace=True), nn.BatchNorm2d(128),
            nn.Conv2d(128, 32, 1), nn.ReLU(inplace=True), nn.BatchNorm2d(32),
            nn.Conv2d(32, num_classes, 1),
        )

    def classify_streams(self, streams: Sequence[torch.Tensor], size: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        """Equal to ``self(upsampled(streams, size, dtype))``, computed cheaper.

        The first layer is linear per pixel and bilinear resizing is linear per channel with weights
        that sum to one, so the two commute: each stream's share of the first layer is applied at
        the stream's own (block) resolution and its 128 channels are resized, instead of resizing
        every stream's channels (576 with the default keys) to full resolution first.  With the
        default blocks (strides 4 and 2 of the tiny U-Net) the first layer costs 4-16x fewer FLOPs,
        and the full-resolution 576-channel tensor is never built (the memory of whole-tile
        scoring); streams of one resolution are summed before their single resize."""
        first = self[0]
        weights = torch.split(first.weight, [f.shape[1] for f in streams], dim=1)
        by_shape: dict[tuple[int, int], torch.Tensor] = {}
        for f, w in zip(streams, weights):
            part = F.conv2d(f.to(dtype), w.to(dtype))
            key = tuple(part.shape[-2:])
            by_shape[key] = by_shape[key] + part if key in by_shape else part
        h = first.bias.to(dtype).view(1, -1, 1, 1)
        for key, part in by_shape.items():
            h = h + (part if key == tuple(size) else F.interpolate(part, size=size, mode="bilinear", align_corners=False))
        for layer in list(self)[1:]:
            h = layer(h)
        return h


def pixel_mlp(cin: int, num_classes: int) -> PixelMLP:
    return PixelMLP(cin, num_classes)


def __getattr__(name: str):
    """Names that moved out of this module keep working from their old import path."""
    if name in ('DiffHRNet', 'DDPMPixelClassifier'):
        from . import segmenters

        return getattr(segmenters, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- HRNet moves the pixel classifier's classes along the image (BENCHMARKS.md round 15) -----------
PROPAGATION_DILATIONS = (1, 2, 4, 8)
NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]  # the centre is index 4
CENTRE_START = 4.0  # classifier bias of the centre weight at step 0: each round keeps 87 % of the pixel


def propagation_channels(dilations: Sequence[int] = PROPAGATION_DILATIONS) -> int:
    return len(NEIGHBOURS) * len(dilations)


def start_near_identity(classify: nn.Conv2d) -> None:
    """Zero weights and a centre bias: the propagation starts as a slight blur of the base, whatever
    HRNet computes, and HRNet's layers still get gradients through the weights."""
    nn.init.zeros_(classify.weight)
    with torch.no_grad():
        classify.bias.zero_()
        classify.bias[NEIGHBOURS.index((0, 0))::len(NEIGHBOURS)] = CENTRE_START


def propagate(logits: torch.Tensor, affinity: torch.Tensor,
              dilations: Sequence[int] = PROPAGATION_DILATIONS) -> torch.Tensor:
    """Spatial propagation (CSPN, Cheng et al. 2018): for each dilation d in turn, every pixel's
    logits become a convex mix of its own and its 8 neighbours' at distance d, with per-pixel weights
    ``softmax(affinity)`` (``(B, 9 · len(dilations), H, W)``, at the logits' size).  The mix cannot
    create class evidence, only move it: a network that predicts the weights from the image decides
    *where* regions end, the logits it propagates *what* they are.  Borders repeat the edge pixel."""
    if affinity.shape[1] != propagation_channels(dilations):
        raise ConfigError(f"propagation needs {propagation_channels(dilations)} affinity channels, "
                          f"got {affinity.shape[1]}")
    h, w = logits.shape[-2:]
    k = len(NEIGHBOURS)
    for i, d in enumerate(dilations):
        weights = affinity[:, k * i:k * (i + 1)].float().softmax(1)
        padded = F.pad(logits, (d, d, d, d), mode="replicate")
        mixed = torch.zeros_like(logits)
        for j, (dy, dx) in enumerate(NEIGHBOURS):
            mixed = mixed + weights[:, j:j + 1] * padded[..., d + dy * d:d + dy * d + h, d + dx * d:d + dx * d + w]
        logits = mixed
    return logits
