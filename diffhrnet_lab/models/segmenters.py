"""The segmenters a run can train, and their checkpoints.

* ``hrnet``: HRNetV2 alone (the baseline of every table);
* ``diffhrnet``: HRNetV2 with DDPM features fused at chosen stages (Wu et al., GRSL 2024, §II);
* ``ddpm_mlp``: DDPM-Seg's pixel classifier on the DDPM features alone (Baranchuk et al. 2022).

A checkpoint folder (``best/``, ``last/``) holds ``model.safetensors`` and ``model.json`` (method,
variant, fusion settings, classes, band statistics, and the DDPM's bundle path and weight hash).
A frozen DDPM is not copied into it: it is found again through ``model.json`` and its hash checked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import MODEL_FIELDS_BEFORE, SCORING_ONLY, FeatureConfig, ModelConfig, embedded_ddpm_dir
from ..data.tiling import pad_to
from ..ddpm.unet import bundle_weights, load_bundle
from ..errors import ConfigError, DataError
from ..features.extractor import FeatureExtractor, file_hash
from ..fileio import atomic_dir, atomic_write_json
from .fusion import (FusionPoint, HeadStreams, PooledStreams, StreamNorm, parse_stages, pixel_mlp, propagate,
                     propagation_channels, start_near_identity)
from .hrnet import HRNetBackbone, HRNetV2Head

SEGMENTERS = ("hrnet", "diffhrnet", "ddpm_mlp")
RGB_NORMS = ("dataset", "window")
CORRECTIONS = ("logits", "propagate")
MIN_WINDOW_STD = 0.1  # a flat window (water, a roof) is not stretched beyond 10x: its noise is not signal


def window_standardised(x: torch.Tensor) -> torch.Tensor:
    """Each sample's bands standardised over its own pixels (instance normalisation of the input,
    IBN-Net's remedy for appearance shifts between domains); the spread is floored at
    ``MIN_WINDOW_STD`` of the dataset-normalised scale."""
    mean = x.mean((-2, -1), keepdim=True)
    std = x.std((-2, -1), keepdim=True).clamp_min(MIN_WINDOW_STD)
    return (x - mean) / std


class DiffHRNet(nn.Module):
    """HRNetV2 with DDPM features fused at ``stages``; with no stages (or no extractor) it is plain HRNet.

    ``extractor`` is a :class:`~diffhrnet_lab.ddpm.features.FeatureExtractor`; its U-Net becomes the
    submodule ``ddpm`` (frozen unless ``finetune_ddpm``).  Inputs of any size: padded to a multiple
    of 32 and the logits cropped back.
    """

    def __init__(self, num_classes: int, in_channels: int, variant: str = "w18_small", extractor=None,
                 stages: str | Sequence[int] = "multistage", fusion: str = "gated", finetune_ddpm: bool = False,
                 head_dropout: float = 0.1, feature_norm: bool = False, head_fusion: int = 0,
                 aux_weight: float = 0.0, logit_fusion: bool = False, residual: bool = False,
                 detach_base: bool = False, rgb_dropout: float = 0.0, correction_scale: float = 1.0,
                 correction_dropout: float = 0.0, rgb_norm: str = "dataset", correction: str = "logits",
                 base_blocks: str | Sequence[int] = "", fusion_blocks: str | Sequence[int] = "",
                 frozen_base: bool = False):
        super().__init__()
        self.stages = parse_stages(stages) if extractor is not None else ()
        self.backbone = HRNetBackbone(variant, in_channels)
        self.extractor = extractor
        self.finetune_ddpm = finetune_ddpm
        self.fusion_op = fusion
        self.points = nn.ModuleDict()
        self.uses_streams = extractor is not None and bool(self.stages or head_fusion or aux_weight or logit_fusion
                                                           or residual)
        if logit_fusion and not aux_weight:
            raise ConfigError("model.logit_fusion adds the features-only head's logits: it needs model.aux_weight > 0")
        if detach_base and not (residual and aux_weight):
            raise ConfigError("model.detach_base trains the residual model's pixel classifier on its own loss only: "
                              "it needs model.residual=true and model.aux_weight > 0")
        if not 0.0 <= rgb_dropout <= 1.0:
            raise ConfigError(f"model.rgb_dropout is a probability, got {rgb_dropout}")
        if rgb_dropout and not self.uses_streams:
            raise ConfigError("model.rgb_dropout hides the image from HRNet so that it works from the DDPM "
                              "features: without features (method hrnet, or no extractor) it would see nothing")
        if correction_scale < 0:
            raise ConfigError(f"model.correction_scale must be >= 0, got {correction_scale}")
        # round 9 of BENCHMARKS.md: trained in full, HRNet's correction overshoots on an unseen scene;
        # scored at 0.5 the logits are the mean of the fused model's and its base's (an ensemble).
        # Only the residual model has a base to shrink towards; elsewhere the setting does nothing.
        self.correction_scale = correction_scale if residual and self.uses_streams else 1.0
        if not 0.0 <= correction_dropout <= 1.0:
            raise ConfigError(f"model.correction_dropout is a probability, got {correction_dropout}")
        if correction_dropout and not (residual and self.uses_streams):
            raise ConfigError("model.correction_dropout leaves HRNet's correction of the pixel-classifier base out "
                              "of some training samples: it needs model.residual=true (method diffhrnet)")
        # round 11: trained so, the base must classify alone for those samples and the sum for the
        # others; the expected logits are base + (1 - p) · correction, what correction_scale scores
        self.correction_dropout = correction_dropout
        # round 6 of BENCHMARKS.md: HRNet fitted on one or two scenes' colours does not carry to
        # another; without the image its correction is spatial context over the fused features
        # (with no fusion stages it can add only a per-class constant to the pixel classifier)
        self.rgb_dropout = rgb_dropout
        if rgb_norm not in RGB_NORMS:
            raise ConfigError(f"model.rgb_norm '{rgb_norm}': choose one of {', '.join(RGB_NORMS)}")
        # round 12: a scene's illumination and sensor gain shift every band's mean and contrast; HRNet
        # fitted on one scene reads another's shifted colours as other classes. Standardising each
        # window per band removes that shift before HRNet sees it (the DDPM still sees the image as
        # pretrained, with the dataset's statistics).
        self.rgb_norm = rgb_norm
        if correction not in CORRECTIONS:
            raise ConfigError(f"model.correction '{correction}': choose one of {', '.join(CORRECTIONS)}")
        if correction == "propagate" and not (residual and self.uses_streams):
            raise ConfigError("model.correction=propagate moves the pixel-classifier base's logits along the image: "
                              "it needs model.residual=true (method diffhrnet)")
        if correction == "propagate" and (correction_scale != 1.0 or correction_dropout):
            raise ConfigError("model.correction=propagate has no logits of HRNet's to scale or drop: "
                              "set model.correction_scale=1 and model.correction_dropout=0")
        # round 15: HRNet outputs where the base's classes spread (3x3 mixing weights per pixel and
        # dilation), not class evidence of its own, which rounds 5-14 found does not carry to new scenes
        self.correction = correction
        chans = [extractor.channels()[k] for k in extractor.keys] if self.uses_streams else []
        self.norm = StreamNorm(chans) if self.uses_streams and feature_norm else None
        # round 23: the base and HRNet may read different decoder blocks (the pixel classifier did best
        # on blocks 0 and 1, the fused correction on 1 and 2); by default both read every block
        if base_blocks and not (aux_weight or residual):
            raise ConfigError("model.base_blocks chooses what the pixel-classifier base reads: it needs "
                              "model.residual=true or model.aux_weight > 0")
        self.base_streams = self._streams_of("model.base_blocks", base_blocks)
        # round 25: the base is a finished pixel classifier, frozen, reading the raw streams as it was
        # trained to; HRNet learns only the correction, so the base cannot fall below the classifier
        # alone (round 24's diagnostic: trained jointly it ends 4-7 points below it). Screened in round
        # 25: the correction on a fixed classifier made 23 of 24 held-out scores worse
        if frozen_base and not (residual and self.uses_streams):
            raise ConfigError("model.base_init makes a finished pixel classifier the residual model's base: "
                              "it needs model.residual=true (method diffhrnet)")
        if frozen_base and (base_blocks or aux_weight or detach_base or correction == "propagate"):
            raise ConfigError("model.base_init freezes the base as the pixel classifier was trained (every block, "
                              "no loss of its own): leave model.base_blocks, aux_weight and detach_base unset "
                              "and model.correction=logits")
        self.frozen_base = frozen_base
        self.fusion_streams = self._streams_of("model.fusion_blocks", fusion_blocks)
        fused = [chans[i] for i in self.fusion_streams]
        self.head_streams = HeadStreams(fused, head_fusion) if self.uses_streams and head_fusion else None
        extra = [self.head_streams.width] if self.head_streams else []
        head_out = propagation_channels() if correction == "propagate" else num_classes
        self.head = HRNetV2Head(list(self.backbone.out_channels) + extra, head_out, dropout=head_dropout)
        self.aux = (pixel_mlp(sum(chans[i] for i in self.base_streams), num_classes)
                    if self.uses_streams and (aux_weight or residual) else None)
        self.aux_weight, self.logit_fusion = aux_weight, logit_fusion or (residual and self.uses_streams)
        # the base is then trained exactly as the DDPM pixel classifier is, and HRNet only corrects it
        self.detach_base = detach_base
        if residual and self.uses_streams:
            # ControlNet's zero convolution: at step 0 the model *is* the pixel classifier, and HRNet
            # only adds what lowers the loss from there (a warm start inside one run)
            if correction == "propagate":
                start_near_identity(self.head.classify)
            else:
                nn.init.zeros_(self.head.classify.weight)
                nn.init.zeros_(self.head.classify.bias)
        self.aux_logits: torch.Tensor | None = None
        if frozen_base:
            self.aux.requires_grad_(False)
        if self.uses_streams:
            self.ddpm = extractor.unet
            self.ddpm.requires_grad_(finetune_ddpm)
            for s in self.stages:
                for i, width in enumerate(self.backbone.stage_channels[s - 1]):
                    self.points[f"s{s}b{i}"] = FusionPoint(fusion, width, fused, identity_start=rgb_dropout < 1)

    def _streams_of(self, setting: str, blocks: str | Sequence[int]) -> list[int]:
        """Positions in the extractor's keys of the streams from ``blocks`` (empty: every stream)."""
        if not self.uses_streams:
            return []
        keys = self.extractor.keys
        if isinstance(blocks, str):
            try:
                blocks = [int(b) for b in blocks.replace(",", " ").split()]
            except ValueError:
                raise ConfigError(f"{setting} '{blocks}': decoder block numbers, e.g. 1,2") from None
        have = sorted({b for _, b in keys})
        if any(b not in have for b in blocks):
            raise ConfigError(f"{setting} names block(s) {sorted(set(blocks) - set(have))}, but the features hold "
                              f"blocks {have} (features.blocks)")
        return [i for i, (_, b) in enumerate(keys) if not blocks or b in blocks]

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
        aux = None
        fuse = None  # the backbone's per-stage hook, when streams exist
        if self.uses_streams:
            streams = self.ddpm_streams(xp) if streams is None else self.cached_streams(streams, xp.shape[-2:])
            raw = streams
            if self.norm is not None:
                streams = self.norm(streams)

            pooled = PooledStreams([streams[i] for i in self.fusion_streams])

            def fuse_stage(stage: int, branches: list[torch.Tensor]) -> list[torch.Tensor]:
                if stage not in self.stages:
                    return branches
                return [self.points[f"s{stage}b{i}"](b, pooled) for i, b in enumerate(branches)]
            fuse = fuse_stage

        branches = self.backbone(self.image_input(xp), fuse if self.stages else None)
        if self.head_streams is not None:
            branches = [*branches, self.head_streams(pooled, branches[0].shape[-2:])]
        logits = F.interpolate(self.head(branches), size=xp.shape[-2:], mode="bilinear", align_corners=False)
        if self.aux is not None:
            base_in = raw if self.frozen_base else streams
            aux = self.aux.classify_streams([base_in[i] for i in self.base_streams], xp.shape[-2:], xp.dtype)
            base = aux.detach() if self.detach_base else aux
            if self.correction == "propagate":
                logits = propagate(base, logits)
            elif self.logit_fusion:
                if self.correction_scale != 1.0 and not self.training:
                    logits = self.correction_scale * logits
                if self.correction_dropout and self.training:
                    keep = torch.rand(logits.shape[0], 1, 1, 1, device=logits.device) >= self.correction_dropout
                    logits = logits * keep.to(logits.dtype)
                logits = logits + base
        # the features-only head's logits, for the deep-supervision loss (training.finetune.train_step)
        self.aux_logits = aux[..., :h, :w] if aux is not None and self.aux_weight and self.training else None
        return logits[..., :h, :w]

    def train(self, mode: bool = True) -> "DiffHRNet":
        """A frozen base keeps its BatchNorm statistics: it scores as the finished classifier did."""
        super().train(mode)
        if self.frozen_base:
            self.aux.eval()
        return self

    def image_input(self, x: torch.Tensor) -> torch.Tensor:
        """HRNet's input: the image (standardised per window with ``rgb_norm="window"``), zeroed per
        sample with probability ``rgb_dropout`` in training, always zeroed when it is 1 (so training
        and scoring see the same model)."""
        if self.rgb_dropout >= 1.0:
            return torch.zeros_like(x)
        if self.rgb_norm == "window":
            x = window_standardised(x)
        if self.rgb_dropout and self.training:
            keep = torch.rand(x.shape[0], 1, 1, 1, device=x.device) >= self.rgb_dropout
            return x * keep.to(x.dtype)
        return x

    def param_groups(self, rgb_lr: float = 1.0) -> list[dict]:
        """Trainable parameters for the optimiser; HRNet's own layers (backbone, head) get the
        learning-rate factor ``rgb_lr`` (``model.rgb_lr``), the fusion and feature layers 1."""
        rgb = [p for n, p in self.named_parameters() if p.requires_grad and n.startswith(("backbone.", "head."))]
        rest = [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith(("backbone.", "head."))]
        if rgb_lr == 1.0 or not self.uses_streams:
            return [{"params": rgb + rest, "lr_scale": 1.0}]
        return [g for g in ({"params": rgb, "lr_scale": rgb_lr}, {"params": rest, "lr_scale": 1.0}) if g["params"]]

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
        self.mlp = pixel_mlp(cin, num_classes)
        self.stages = ()

    def forward(self, x: torch.Tensor, streams: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        if streams is None:
            with torch.set_grad_enabled(self.finetune_ddpm and torch.is_grad_enabled()):
                feats = self.extractor.compute(x)
            streams = [feats[k] for k in self.extractor.keys]
        return self.mlp.classify_streams(streams, x.shape[-2:], x.dtype)

    trainable_state_dict = DiffHRNet.trainable_state_dict


def ddpm_dir_of(features: FeatureConfig) -> Path:
    return Path(features.checkpoint) if features.checkpoint else embedded_ddpm_dir()


def build_segmenter(model: ModelConfig, features: FeatureConfig, num_classes: int, bands: int,
                    bundle=None, load_base: bool = True) -> nn.Module:
    """A new segmenter of ``model.method``.  With ``model.base_init`` the residual model's base is
    loaded from that pixel-classifier run (``load_base=False``: a checkpoint being loaded brings it)."""
    if model.method not in SEGMENTERS:
        raise ConfigError(f"unknown method '{model.method}'; choose one of {', '.join(SEGMENTERS)}")
    if model.method == "hrnet":
        return DiffHRNet(num_classes, bands, model.variant, extractor=None, head_dropout=model.head_dropout,
                         rgb_norm=model.rgb_norm)
    if bundle is None:
        raise ConfigError(f"method '{model.method}' needs a DDPM bundle")
    if bundle.bands != bands:
        raise DataError(f"{bundle.path}: the DDPM was trained on {bundle.bands} band(s) but the tiles have {bands}")
    fx = FeatureExtractor.from_bundle(bundle, features.timesteps, features.blocks, noise_seed=features.noise_seed)
    if model.method == "ddpm_mlp":
        return DDPMPixelClassifier(num_classes, fx, finetune_ddpm=model.finetune_ddpm)
    net = DiffHRNet(num_classes, bands, model.variant, extractor=fx, stages=model.stages, fusion=model.fusion,
                     finetune_ddpm=model.finetune_ddpm, head_dropout=model.head_dropout,
                     feature_norm=model.feature_norm, head_fusion=model.head_fusion, aux_weight=model.aux_weight,
                     logit_fusion=model.logit_fusion, residual=model.residual,
                     detach_base=model.detach_base, rgb_dropout=model.rgb_dropout,
                     correction_scale=model.correction_scale, correction_dropout=model.correction_dropout,
                     rgb_norm=model.rgb_norm, correction=model.correction, base_blocks=model.base_blocks,
                     fusion_blocks=model.fusion_blocks, frozen_base=bool(model.base_init))
    if model.base_init and load_base:
        load_base_classifier(net, model.base_init, features, num_classes, bundle)
    return net


def finished_checkpoint(run: str | os.PathLike, role: str, then: str) -> Path:
    """A run folder (its ``last/``: the step the rotation scores) or a checkpoint folder itself, that
    another run reads as its ``role`` (a teacher, a base); ``then`` says what to do when there is none."""
    r = Path(run)
    for d in (r, r / "last"):
        if (d / "model.json").is_file() and (d / "model.safetensors").is_file():
            return d
    raise DataError(f"{role} '{run}': no finished checkpoint there (want model.json and model.safetensors "
                    f"in it or in its last/); {then}")


def load_base_classifier(net: "DiffHRNet", run: str | os.PathLike, features: FeatureConfig, num_classes: int,
                         bundle) -> None:
    """Copy a finished ``ddpm_mlp`` run's classifier into ``net``'s base.  It must have read the same
    DDPM (weights hash), timesteps and blocks, and have the same classes, or its weights mean
    something else here."""
    weights, meta_file = _checkpoint_files(finished_checkpoint(run, "model.base_init", "train the ddpm_mlp run first"))
    meta = json.loads(meta_file.read_text())
    want = {"method": "ddpm_mlp", "num_classes": num_classes, "timesteps": list(features.timesteps),
            "blocks": list(features.blocks), "ddpm": file_hash(bundle_weights(bundle.path))}
    have = {"method": meta["model"]["method"], "num_classes": meta["num_classes"],
            "timesteps": list(meta["features"]["timesteps"]), "blocks": list(meta["features"]["blocks"]),
            "ddpm": meta["ddpm"]["sha256"]}
    bad = [k for k in want if want[k] != have[k]]
    if bad:
        raise DataError(f"{weights.parent}: cannot be this model's base: its {bad[0]} is {str(have[bad[0]])[:16]!r}, "
                        f"this run's {str(want[bad[0]])[:16]!r}")
    state = load_file(str(weights))
    net.aux.load_state_dict({k[len("mlp."):]: v for k, v in state.items() if k.startswith("mlp.")})


def saved_features(meta: dict[str, Any]) -> FeatureConfig:
    """The :class:`FeatureConfig` a checkpoint's ``model.json`` (``meta``) was trained with (JSON
    keeps its tuples as lists)."""
    f = meta["features"]
    return FeatureConfig(**{**f, "timesteps": tuple(f["timesteps"]), "blocks": tuple(f["blocks"])})


def save_segmenter(path: Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    with atomic_dir(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.trainable_state_dict().items()},
                  str(tmp / "model.safetensors"), metadata={"format": "pt"})
        atomic_write_json(tmp / "model.json", meta)
    return path


def _checkpoint_files(path: Path) -> tuple[Path, Path]:
    path = Path(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise DataError(f"{path}: not a kit checkpoint. Only safetensors weights are loaded; a pickle "
                            "(.ckpt/.pt/.pth/.bin) is refused without being opened, since unpickling can run code")
        path = path.parent
    weights, meta = path / "model.safetensors", path / "model.json"
    if not meta.is_file() or not weights.is_file():
        raise DataError(f"{path}: not a segmentation checkpoint (needs model.json and model.safetensors)")
    return weights, meta


def scoring_settings(model: ModelConfig) -> dict[str, Any]:
    """The scoring-only settings (:data:`~diffhrnet_lab.config.SCORING_ONLY`) as they act on this
    model: ``correction_scale`` shrinks the residual Diff-HRNet's correction and means nothing
    (1.0) for any other model."""
    residual = model.method == "diffhrnet" and model.residual
    return {"correction_scale": model.correction_scale if residual else 1.0}


def load_segmenter(path: str | os.PathLike, ddpm_path: str | os.PathLike | None = None,
                   expect: dict[str, Any] | None = None,
                   scoring: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a segmenter from its checkpoint folder (safetensors only).

    ``expect`` (e.g. ``{"variant": "w18", "num_classes": 6}``) makes a mismatch an error that names
    both the checkpoint's and the expected values.  ``scoring``: model settings that change how
    the trained weights are scored, not what they learned (:data:`~diffhrnet_lab.config.SCORING_ONLY`),
    used instead of the checkpoint's; ``meta["model"]`` then shows them.
    """
    weights, meta_file = _checkpoint_files(Path(path))
    try:
        meta = json.loads(meta_file.read_text())
        state = load_file(str(weights))
    except (SafetensorError, ValueError, OSError) as exc:
        raise DataError(f"{weights.parent}: corrupt checkpoint ({str(exc)[:150]})") from None
    # a checkpoint that predates a model field was trained without what it adds
    unknown = sorted(set(scoring or {}) - set(SCORING_ONLY))
    if unknown:
        raise ConfigError(f"{unknown}: not scoring-only model settings ({', '.join(SCORING_ONLY)}); they change "
                          "what a model learns, so a checkpoint cannot be scored with another value")
    meta["model"] = {**meta["model"], **(scoring or {})}
    mc, fc = ModelConfig(**{**MODEL_FIELDS_BEFORE, **meta["model"]}), saved_features(meta)
    for key, want in (expect or {}).items():
        have = meta["num_classes"] if key == "num_classes" else getattr(mc, key, meta.get(key))
        if have != want:
            raise DataError(f"{weights.parent}: checkpoint is {mc.method} {mc.variant} with {meta['num_classes']} "
                            f"classes, but {key}={want!r} was expected (checkpoint has {have!r})")
    bundle = None
    if mc.method != "hrnet":
        ddpm_dir = Path(ddpm_path) if ddpm_path else (embedded_ddpm_dir() if meta["ddpm"]["path"] == "embedded"
                                                       else Path(meta["ddpm"]["path"]))
        bundle = load_bundle(ddpm_dir)
        if not mc.finetune_ddpm:
            have = file_hash(bundle_weights(ddpm_dir))
            if have != meta["ddpm"]["sha256"]:
                raise DataError(f"{ddpm_dir}: DDPM weights differ from those {weights.parent} was trained with "
                                f"(sha256 {have[:12]} vs {meta['ddpm']['sha256'][:12]}); pass the right bundle")
    model = build_segmenter(mc, fc, meta["num_classes"], meta["bands"], bundle, load_base=False)
    own = model.trainable_state_dict()
    bad = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items() if k in state and state[k].shape != v.shape]
    missing = sorted(set(own) - set(state))
    if bad or missing:
        detail = f"{bad[0][0]} is {bad[0][1]} in the file, {bad[0][2]} in the model" if bad else f"missing {missing[:3]}"
        raise DataError(f"{weights}: weights do not fit {mc.method} {mc.variant} with {meta['num_classes']} classes "
                        f"as model.json says ({detail})")
    model.load_state_dict(state, strict=False)
    return model.eval(), meta
