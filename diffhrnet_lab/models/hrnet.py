"""HRNetV2 (Wang et al., TPAMI 2020; Sun et al. 2019, "High-Resolution Representations for Labeling
Pixels and Regions"), written out so it can be read and changed: the network Diff-HRNet builds on.

The idea: instead of encoding to low resolution and decoding back, keep a 1/4-resolution branch
for the whole network and add lower-resolution branches stage by stage (1/8, 1/16, 1/32).  Every
*HR module* runs its branches in parallel and then **fuses** them: each output branch is the sum
of every input branch brought to its resolution (strided 3x3 convs down, 1x1 conv + nearest
upsampling up).  Fine detail therefore survives to the output, which matters for cars and narrow
roads at 0.5 m.  HRNetV2's segmentation head upsamples all four branches to 1/4, concatenates
them, mixes them with a 1x1 conv and classifies (the "FCN head" of mmsegmentation).

Variants follow the published configurations; the backbone's layout and parameter count equal
timm's ``hrnet_*`` models (tested), and :func:`convert_timm_state_dict` loads their weights, so
users with ImageNet-pretrained HRNets can start from them.  The stage hooks (``fuse``) are where
Diff-HRNet injects diffusion features.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError

BN_MOMENTUM = 0.1


@dataclass(frozen=True)
class StageSpec:
    modules: int
    blocks: tuple[int, ...]  # blocks per branch
    channels: tuple[int, ...]  # width per branch
    block: str = "basic"


def _variant(width: int, small: bool = False) -> tuple[StageSpec, ...]:
    w = (width, 2 * width, 4 * width, 8 * width)
    if small:  # HRNetV2-W18-Small-v2: fewer modules and blocks
        return (StageSpec(1, (2,), (64,), "bottleneck"), StageSpec(1, (2, 2), w[:2]),
                StageSpec(3, (2, 2, 2), w[:3]), StageSpec(2, (2, 2, 2, 2), w))
    return (StageSpec(1, (4,), (64,), "bottleneck"), StageSpec(1, (4, 4), w[:2]),
            StageSpec(4, (4, 4, 4), w[:3]), StageSpec(3, (4, 4, 4, 4), w))


VARIANTS: dict[str, tuple[StageSpec, ...]] = {
    "w18_small": _variant(18, small=True),
    "w18": _variant(18),
    "w32": _variant(32),
    "w48": _variant(48),
}
TIMM_NAMES = {"w18_small": "hrnet_w18_small_v2", "w18": "hrnet_w18", "w32": "hrnet_w32", "w48": "hrnet_w48"}


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, momentum=BN_MOMENTUM)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, 1, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _bn(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x), inplace=True)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = _bn(planes * 4)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = F.relu(self.bn2(self.conv2(y)), inplace=True)
        y = self.bn3(self.conv3(y))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x), inplace=True)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def _layer(block: type, cin: int, planes: int, n: int) -> nn.Sequential:
    """``n`` residual blocks; a 1x1 projection on the first when the width changes."""
    down = None
    if cin != planes * block.expansion:
        down = nn.Sequential(nn.Conv2d(cin, planes * block.expansion, 1, bias=False), _bn(planes * block.expansion))
    layers = [block(cin, planes, down)]
    layers += [block(planes * block.expansion, planes) for _ in range(1, n)]
    return nn.Sequential(*layers)


class HRModule(nn.Module):
    """Parallel branches, then exchange between all resolutions (the "repeated multi-scale fusion")."""

    def __init__(self, spec: StageSpec, cins: Sequence[int]):
        super().__init__()
        block = BLOCKS[spec.block]
        self.branches = nn.ModuleList(_layer(block, cins[i], c, n) for i, (c, n) in enumerate(zip(spec.channels, spec.blocks)))
        outs = [c * block.expansion for c in spec.channels]
        self.out_channels = outs
        self.fuse = nn.ModuleList()
        if len(outs) == 1:
            return
        for i in range(len(outs)):
            row = nn.ModuleList()
            for j in range(len(outs)):
                if j > i:  # lower resolution → up: 1x1 conv, BN, nearest ×2^(j-i)
                    row.append(nn.Sequential(nn.Conv2d(outs[j], outs[i], 1, bias=False), _bn(outs[i]),
                                             nn.Upsample(scale_factor=2 ** (j - i), mode="nearest")))
                elif j == i:
                    row.append(nn.Identity())
                else:  # higher resolution → down: (i-j) strided 3x3 convs
                    steps = []
                    for k in range(i - j):
                        last = k == i - j - 1
                        cout = outs[i] if last else outs[j]
                        conv = [nn.Conv2d(outs[j], cout, 3, 2, 1, bias=False), _bn(cout)]
                        steps.append(nn.Sequential(*conv) if last else nn.Sequential(*conv, nn.ReLU(False)))
                    row.append(nn.Sequential(*steps))
            self.fuse.append(row)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [b(x) for b, x in zip(self.branches, xs)]
        if len(xs) == 1:
            return xs
        out = []
        for row in self.fuse:
            y = row[0](xs[0])
            for f, x in zip(list(row)[1:], xs[1:]):
                y = y + f(x)
            out.append(F.relu(y, inplace=True))  # y is a fresh sum: in place is safe, as in timm
        return out


def _transition(cins: Sequence[int], couts: Sequence[int]) -> nn.ModuleList:
    """Adapt widths of existing branches and spawn the next lower-resolution branch."""
    layers = nn.ModuleList()
    for i, cout in enumerate(couts):
        if i < len(cins):
            layers.append(nn.Identity() if cins[i] == cout else nn.Sequential(
                nn.Conv2d(cins[i], cout, 3, 1, 1, bias=False), _bn(cout), nn.ReLU(inplace=True)))
        else:
            steps = []
            for j in range(i + 1 - len(cins)):
                cout_j = cout if j == i - len(cins) else cins[-1]
                steps.append(nn.Sequential(nn.Conv2d(cins[-1], cout_j, 3, 2, 1, bias=False), _bn(cout_j), nn.ReLU(inplace=True)))
            layers.append(nn.Sequential(*steps))
    return layers


class Stem(nn.Module):
    """Two stride-2 3x3 convs: the network works at 1/4 resolution from here on."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 2, 1, bias=False)
        self.bn1 = _bn(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = _bn(64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)), inplace=True))), inplace=True)


FuseHook = Callable[[int, list[torch.Tensor]], list[torch.Tensor]]


class HRNetBackbone(nn.Module):
    """Stem and four stages; ``forward`` returns the four branches (1/4, 1/8, 1/16, 1/32).

    ``fuse(stage, branches) -> branches`` is called after each stage (1..4): the seam where
    Diff-HRNet adds DDPM features.  Inputs must be multiples of 32 (the segmenter pads).
    """

    def __init__(self, variant: str = "w18", in_channels: int = 3):
        super().__init__()
        if variant not in VARIANTS:
            raise ConfigError(f"unknown HRNet variant '{variant}'; choose one of {', '.join(VARIANTS)}")
        self.variant = variant
        specs = VARIANTS[variant]
        self.stem = Stem(in_channels)
        s1 = specs[0]
        self.stage1 = _layer(BLOCKS[s1.block], 64, s1.channels[0], s1.blocks[0])
        prev = [s1.channels[0] * BLOCKS[s1.block].expansion]
        self.stage_channels = [list(prev)]
        for k, spec in enumerate(specs[1:], start=2):
            couts = [c * BLOCKS[spec.block].expansion for c in spec.channels]
            setattr(self, f"transition{k - 1}", _transition(prev, couts))
            mods, cins = [], list(couts)
            for _ in range(spec.modules):
                mods.append(HRModule(spec, cins))
                cins = mods[-1].out_channels
            setattr(self, f"stage{k}", nn.Sequential(*mods))
            prev = cins
            self.stage_channels.append(list(prev))
        self.out_channels = prev
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, fuse: FuseHook | None = None) -> list[torch.Tensor]:
        xs = [self.stage1(self.stem(x))]
        if fuse is not None:
            xs = fuse(1, xs)
        for k in (2, 3, 4):
            trans = getattr(self, f"transition{k - 1}")
            xs = [t(xs[i] if i < len(xs) else xs[-1]) for i, t in enumerate(trans)]
            for module in getattr(self, f"stage{k}"):
                xs = module(xs)
            if fuse is not None:
                xs = fuse(k, xs)
        return xs


def concat_at_first(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """HRNetV2's representation (§3): every branch upsampled to the first (1/4) and concatenated."""
    size = xs[0].shape[-2:]
    return torch.cat([xs[0]] + [F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in xs[1:]], 1)


class HRNetV2Head(nn.Module):
    """Upsample every branch to 1/4, concatenate, 1x1 conv + BN + ReLU, classify (HRNetV2, §3)."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, dropout: float = 0.1):
        super().__init__()
        total = sum(in_channels)
        self.mix = nn.Sequential(nn.Conv2d(total, total, 1, bias=False), _bn(total), nn.ReLU(inplace=True))
        self.drop = nn.Dropout2d(dropout)
        self.classify = nn.Conv2d(total, num_classes, 1)

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.classify(self.drop(self.mix(concat_at_first(xs))))


_TIMM_RENAMES = [
    (re.compile(r"^(conv1|bn1|conv2|bn2)\."), r"stem.\1."),
    (re.compile(r"^layer1\."), "stage1."),
    (re.compile(r"\.fuse_layers\."), ".fuse."),
]


def convert_timm_state_dict(state: dict[str, torch.Tensor], backbone: HRNetBackbone) -> dict[str, torch.Tensor]:
    """Map a timm ``hrnet_*`` state dict onto :class:`HRNetBackbone` names.

    Classification-head weights (``incre_modules``, ``downsamp_modules``, ``final_layer``,
    ``classifier``) are dropped.  The first conv is adapted when band counts differ: its RGB
    kernels are averaged and repeated, scaled by 3/bands, the usual way to start multispectral
    models from RGB weights.  Any missing or unexpected key is an error naming it.
    """
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k.split(".")[0] in ("incre_modules", "downsamp_modules", "final_layer", "classifier"):
            continue
        for pat, rep in _TIMM_RENAMES:
            k = pat.sub(rep, k)
        out[k] = v
    ours = backbone.state_dict()
    w = out.get("stem.conv1.weight")
    if w is not None and w.shape[1] != ours["stem.conv1.weight"].shape[1]:
        bands = ours["stem.conv1.weight"].shape[1]
        out["stem.conv1.weight"] = w.mean(1, keepdim=True).repeat(1, bands, 1, 1) * (w.shape[1] / bands)
    missing, extra = sorted(set(ours) - set(out)), sorted(set(out) - set(ours))
    if missing or extra:
        raise ConfigError(f"timm state dict does not fit HRNet '{backbone.variant}': missing {missing[:5]}, "
                          f"unexpected {extra[:5]}")
    bad = [k for k in ours if ours[k].shape != out[k].shape]
    if bad:
        raise ConfigError(f"shape mismatch for {bad[:5]}: is the timm model the same variant as '{backbone.variant}'?")
    return out
