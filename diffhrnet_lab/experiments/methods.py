"""The one table of named methods that experiments compare.

A *method* is a segmenter (``models.segmenters.SEGMENTERS``) plus the model settings that make it
a variant.  The demo, the sweeps and the label-efficiency experiment all name methods from here,
so "Diff-HRNet" means the same model in every table of the kit.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig, replace
from ..errors import ConfigError

# name → (label for tables and plots, ModelConfig changes)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "hrnet": ("HRNet", {"method": "hrnet"}),
    "ddpm_mlp": ("DDPM pixel classifier", {"method": "ddpm_mlp"}),
    "diffhrnet": ("Diff-HRNet", {"method": "diffhrnet"}),  # the profile's default fusion settings
    "late": ("Diff-HRNet (late)", {"method": "diffhrnet", "stages": "late"}),
    "multistage": ("Diff-HRNet (multistage)", {"method": "diffhrnet", "stages": "multistage"}),
}


def check_methods(names) -> list[str]:
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}: choose from {', '.join(METHODS)}")
    return list(names)


def method_model(model: ModelConfig, name: str) -> ModelConfig:
    """``model`` turned into method ``name`` (the other settings kept)."""
    check_methods([name])
    return replace(model, **METHODS[name][1])


def label(name: str) -> str:
    return METHODS[name][0] if name in METHODS else name
