"""ImageNet-pretrained HRNet weights: by timm model name, or from a local safetensors file.

``model.init_timm`` is what users find on the timm model pages (``hrnet_w18_small_v2.ms_in1k``):
timm downloads (or reuses its Hugging Face cache for) those weights, and
:func:`~.hrnet.convert_timm_state_dict` maps them onto our HRNetV2.  A file path keeps working
for machines that never see the internet.  Offline and not cached is a :class:`ConfigError` that
says both ways out, never a traceback from deep inside the Hub client.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError, DataError
from ..fileio import load_tensors
from .hrnet import TIMM_NAMES, HRNetBackbone, convert_timm_state_dict


def is_weights_file(spec: str) -> bool:
    """A path (it exists, or names a .safetensors / .pt file) rather than a timm model name."""
    return Path(spec).exists() or spec.endswith((".safetensors", ".pt", ".pth", ".bin")) or spec.startswith((".", "/", "~"))


def timm_state_dict(name: str, variant: str | None = None) -> dict[str, torch.Tensor]:
    """The ImageNet weights of timm model ``name`` (architecture[.tag]) as timm's ``features_only``
    model holds them; ``variant`` (our HRNet variant) is checked first so a mismatch is reported
    before anything is downloaded."""
    try:
        import timm
    except ImportError:
        raise ConfigError(f"model.init_timm '{name}' needs timm (pip install timm), or pass a local "
                          ".safetensors file of timm's weights") from None
    arch = name.split(".", 1)[0]
    if variant is not None and TIMM_NAMES.get(variant) != arch:
        fits = TIMM_NAMES.get(variant, "?")
        raise ConfigError(f"model.init_timm '{name}' is timm's {arch}, but model.variant '{variant}' is {fits}: "
                          f"use {fits}.<tag> (e.g. {fits}.ms_in1k) or the variant that matches")
    if not timm.is_model(arch):
        raise ConfigError(f"model.init_timm '{name}': timm has no model '{arch}'; HRNets: "
                          f"{', '.join(sorted(set(TIMM_NAMES.values())))}")
    try:
        model = timm.create_model(name, pretrained=True, features_only=True, feature_location="")
    except RuntimeError as exc:
        if "pretrained" in str(exc).lower() or "unknown" in str(exc).lower():
            raise ConfigError(f"model.init_timm '{name}': {str(exc).splitlines()[0][:200]}") from None
        raise
    except (OSError, ValueError) as exc:  # offline and not cached; Hub errors derive from these
        raise ConfigError(f"model.init_timm '{name}': cannot download its ImageNet weights and they are not in "
                          f"the Hugging Face cache ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}). "
                          "Run once with network access (timm caches them), or pass a local .safetensors file "
                          "of timm's weights") from None
    return model.state_dict()


def load_timm_backbone(backbone: HRNetBackbone, spec: str) -> None:
    """Start ``backbone`` from timm's ImageNet weights: ``spec`` is a timm model name or a local
    safetensors file of a timm ``hrnet_*`` state dict (today's offline path), or of our own
    backbone's (``backbone.safetensors`` of :func:`~diffhrnet_lab.training.distill.distill_backbone`)."""
    if is_weights_file(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise DataError(f"model.init_timm: {path}: file not found (a timm model name such as "
                            f"{TIMM_NAMES[backbone.variant]}.ms_in1k also works)")
        state = load_tensors(path)
        if set(state) == set(backbone.state_dict()):  # our own backbone's weights (training.distill)
            backbone.load_state_dict(state)
            return
    else:
        state = timm_state_dict(spec, backbone.variant)
    backbone.load_state_dict(convert_timm_state_dict(state, backbone))
