"""One source of defaults: typed configs per stage, and the smoke / quick / full profiles.

Notebooks, the CLI and sweeps all build their settings with :func:`profile_config`, then
override single fields; nothing else in the kit hard-codes a default.

* ``smoke``: CI; every notebook in seconds on a 2-core CPU.  Numbers prove the code runs, not
  that the method works.
* ``quick``: a laptop CPU in minutes; enough to see the method's effect on the embedded samples.
* ``full``: a GPU and paper-scale settings.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

PROFILES = ("smoke", "quick", "full")
PACKAGE_ROOT = Path(__file__).resolve().parent


def samples_dir() -> Path:
    """The embedded samples: ``$DHL_SAMPLES_DIR``, else ``data_samples/`` of the source checkout."""
    env = os.environ.get("DHL_SAMPLES_DIR")
    return Path(env) if env else PACKAGE_ROOT.parent / "data_samples"


def dubai_dir() -> Path | None:
    """The real Dubai aerial tiles from ``$DHL_DUBAI_DIR`` when that folder exists, else ``None``."""
    env = os.environ.get("DHL_DUBAI_DIR")
    return Path(env) if env and Path(env).is_dir() else None


def default_profile() -> str:
    """``$DHL_PROFILE`` when set (tests set ``smoke``), else ``quick``."""
    prof = os.environ.get("DHL_PROFILE", "quick")
    check_profile(prof)
    return prof


def check_profile(name: str) -> str:
    if name not in PROFILES:
        raise ConfigError(f"unknown profile '{name}'; choose one of {', '.join(PROFILES)}")
    return name


@dataclass
class DataConfig:
    """Where the labelled tiles are and how they are cropped and split."""

    root: str = ""  # empty: the embedded samples' labelled/ folder
    scheme: str = "samples"
    crop_size: int = 128
    batch_size: int = 4
    val_groups: tuple[str, ...] | None = None
    val_fraction: float = 0.2
    label_budget: int | float | None = None
    seed: int = 0

    def resolved_root(self) -> Path:
        return Path(self.root) if self.root else samples_dir() / "labelled"


@dataclass
class ProfileConfig:
    """Everything a run needs, per stage; later stages add their own sections."""

    name: str = "quick"
    data: DataConfig = field(default_factory=DataConfig)


_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {"data": {"crop_size": 64, "batch_size": 2}},
    "quick": {"data": {"crop_size": 128, "batch_size": 4}},
    "full": {"data": {"crop_size": 512, "batch_size": 16}},
}


def profile_config(name: str | None = None) -> ProfileConfig:
    """The config of profile ``name`` (``None``: :func:`default_profile`)."""
    name = check_profile(name or default_profile())
    cfg = ProfileConfig(name=name)
    for section, values in _OVERRIDES[name].items():
        setattr(cfg, section, dataclasses.replace(getattr(cfg, section), **values))
    return cfg


def replace(obj: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` that names the valid fields when a change names an unknown one."""
    names = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise ConfigError(f"{type(obj).__name__} has no field(s) {unknown}; valid: {sorted(names)}")
    return dataclasses.replace(obj, **changes)
