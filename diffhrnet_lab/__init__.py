"""Diff-HRNet teaching kit: DDPM features fused into HRNet for remote-sensing segmentation.

The package follows the data flow, one folder per stage; each imports only from the folders
above it (and from the root modules ``config``, ``errors``, ``fileio``)::

    tiles ─► data/ ─► ddpm/ ─► features/ ─► models/ ─► inference/ ─► training/ ─► experiments/ ─► explore/
             tensors   U-Net    timestep ×   fusion +    windows →     loops,       demo, sweeps,   plots,
             + masks   + bundle block maps   HRNet       masks, metrics checkpoints  benchmarks      widgets

* ``data/`` reads tiles and masks (rasterio), maps label colours to classes, crops and splits by
  scene, and holds the tiling geometry (windows, blend weights, padding) that later stages share.
* ``ddpm/`` is the diffusion model itself: U-Net presets, noise schedule, saved bundles, sampling.
* ``features/`` turns a frozen DDPM into per-(timestep, decoder block) feature maps: the batched
  extractor, the whole-tile feature cache, and sharded extraction of an archive.
* ``models/`` is HRNetV2, the fusion operators, and the three segmenters (HRNet-only, Diff-HRNet,
  the DDPM pixel classifier) with their safetensors checkpoints.
* ``inference/`` scores tiles of any size in windows (memory bounded by the window), writes
  georeferenced masks, and computes the metrics.
* ``training/`` holds the two loops (DDPM pretraining, fine-tuning) and what they share: the
  Accelerator, step-indexed data loading, checkpoints with exact resume, LR schedules.
* ``experiments/`` runs what the kit is for: the demo, ablation sweeps, the label-efficiency
  study, benchmarks; one table of named methods and one way of writing tables.
* ``explore/`` is what notebooks call to look at things: feature PCA and k-means, probes, plots,
  widgets, the notebooks' parameter check.
* ``cli.py`` is ``diffhrnet-lab``: thin wrappers over the functions above.

Older module paths (``diffhrnet_lab.train``, ``diffhrnet_lab.ddpm.features``, ...) keep working
through aliases that point at the new modules.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types

__version__ = "0.1.0"

# Old module path → the modules its public names moved to (searched in order).
_MOVED: dict[str, tuple[str, ...]] = {
    "diffhrnet_lab.train": ("diffhrnet_lab.training.finetune", "diffhrnet_lab.models.segmenters",
                            "diffhrnet_lab.inference.evaluate"),
    "diffhrnet_lab.metrics": ("diffhrnet_lab.inference.metrics",),
    "diffhrnet_lab.demo": ("diffhrnet_lab.experiments.demo",),
    "diffhrnet_lab.sweep": ("diffhrnet_lab.experiments.sweep",),
    "diffhrnet_lab.label_efficiency": ("diffhrnet_lab.experiments.label_efficiency",),
    "diffhrnet_lab.bench": ("diffhrnet_lab.experiments.bench",),
    "diffhrnet_lab.analysis": ("diffhrnet_lab.explore.analysis",),
    "diffhrnet_lab.viz": ("diffhrnet_lab.explore.viz",),
    "diffhrnet_lab.widgets": ("diffhrnet_lab.explore.widgets",),
    "diffhrnet_lab.notebook": ("diffhrnet_lab.explore.notebook",),
    "diffhrnet_lab.ddpm.features": ("diffhrnet_lab.features.extractor", "diffhrnet_lab.features.tile_cache"),
    "diffhrnet_lab.ddpm.archive": ("diffhrnet_lab.features.archive",),
    "diffhrnet_lab.ddpm.checkpoints": ("diffhrnet_lab.training.checkpoints", "diffhrnet_lab.fileio"),
    "diffhrnet_lab.ddpm.pretrain": ("diffhrnet_lab.training.pretrain", "diffhrnet_lab.training.accelerator"),
}


class _Alias(types.ModuleType):
    """A module whose attributes are looked up in the modules its names moved to."""

    def __init__(self, name: str, targets: tuple[str, ...]):
        super().__init__(name, f"Moved: {name} → {', '.join(targets)}")
        self.__targets = targets

    def __getattr__(self, attr: str):
        for target in self.__targets:
            mod = importlib.import_module(target)
            if hasattr(mod, attr):
                return getattr(mod, attr)
        raise AttributeError(f"{self.__name__}.{attr} (moved to {', '.join(self.__targets)}) does not exist")


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in _MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return _Alias(spec.name, _MOVED[spec.name])

    def exec_module(self, module):
        pass


if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
    sys.meta_path.append(_AliasFinder())
