"""Helpers for the notebooks' first cells: parameter checking and profile selection.

Papermill injects overrides as a cell starting ``# Parameters`` right after the cell tagged
``parameters``; an unknown name there is only a warning to papermill, and a typo would silently run
the default experiment.  :func:`check_parameters` reads both cells back from the kernel's input
history, so a notebook given an unknown or mistyped parameter stops with a message that lists the
valid ones.  The notebooks' declared cell starts with :data:`DECLARED_MARKER`.

The numbered notebooks are the stages of one course and can be chained (:func:`stage_paths`):
``01`` trains a DDPM into ``run_dir``, and ``02``–``04`` read it back through ``ddpm_dir`` (or the
same ``run_dir``); ``data_root`` points them at a labelled dataset.  Left empty, each notebook falls
back to the embedded samples and DDPM, so every notebook also runs alone.
"""

from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import (ProfileConfig, check_profile, default_profile, embedded_ddpm_dir, profile_config, profile_folder,
                      samples_dir)
from ..data.datasets import MASK_DIR_NAMES
from ..data.labels import dataset_scheme
from ..errors import ConfigError, DataError

DECLARED_MARKER = "# Parameters you can change"
INJECTED_MARKER = "# Parameters\n"


def _assignments(source: str) -> dict[str, Any]:
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    try:
                        out[target.id] = ast.literal_eval(node.value)
                    except ValueError:
                        out[target.id] = None
    return out


def check_parameters(namespace: dict[str, Any]) -> ProfileConfig:
    """Validate papermill's injected parameters against the declared ones; return the profile's config.

    The profile is the ``profile`` parameter when set, else ``$DHL_PROFILE``, else ``quick``.
    """
    history = namespace.get("In") or []
    declared_src = next((s for s in reversed(history) if s.lstrip().startswith(DECLARED_MARKER)), None)
    if declared_src is not None:
        declared = _assignments(declared_src)
        injected_src = [s for s in history if s.startswith(INJECTED_MARKER)]
        for src in injected_src:
            for name, value in _assignments(src).items():
                if name not in declared:
                    raise ConfigError(f"unknown notebook parameter '{name}'; this notebook's parameters are: "
                                      f"{', '.join(sorted(declared))}")
                default = declared[name]
                if default is not None and value is not None and not _compatible(default, value):
                    raise ConfigError(f"parameter '{name}' = {value!r} should be a {type(default).__name__} "
                                      f"like its default {default!r}")
    profile = namespace.get("profile") or default_profile()
    check_profile(profile)
    return profile_config(profile)


def _compatible(default: Any, value: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) == isinstance(value, bool)
    if isinstance(default, (int, float)) and isinstance(value, (int, float)):
        return True
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return True
    return type(default) is type(value)


# Where 01 writes its DDPM inside run_dir: pretrain(out=run_dir/DDPM_SUBDIR) leaves the bundle in final/.
DDPM_SUBDIR = "ddpm"


@dataclass(frozen=True)
class StagePaths:
    """What one notebook reads and writes, resolved from its ``data_root``, ``ddpm_dir``, ``run_dir``."""

    data: Path  # labelled folder: images/ + masks/ (or labels/)
    scheme: str  # label scheme of ``data``
    ddpm: Path  # DDPM bundle folder (ddpm.json, unet/, scheduler/)
    ddpm_from: str  # why that bundle: "ddpm_dir", "run_dir" or "embedded"
    run: Path | None  # the course's shared output folder; None: each notebook's own default
    dataset: str = ""  # a named dataset layout (data.layouts), read as it is released; "": images/ + masks/
    profile: str = "quick"  # the profile the notebook runs (cfg.name): part of its own output folder

    def pairs(self):
        """The labelled image/mask pairs of ``data``, read through the dataset's layout when named."""
        from ..data.layouts import resolve_dataset

        return resolve_dataset(self.data, self.dataset, self.scheme).labelled

    def out(self, stage: str, default: str) -> Path:
        """Where a notebook writes: ``run_dir/<stage>`` when chained, else :func:`profile_folder` of its
        own ``default``."""
        if self.run is not None:
            return self.run / stage
        return profile_folder(default, self.profile)

    def apply(self, cfg: ProfileConfig) -> ProfileConfig:
        """``cfg`` reading this dataset and this DDPM (the ``data`` and ``features`` sections)."""
        return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(self.data), scheme=self.scheme,
                                                                 dataset=self.dataset),
                                   features=dataclasses.replace(cfg.features, checkpoint=str(self.ddpm)))

    def describe(self) -> str:
        return (f"data: {self.data} (scheme {self.scheme})\nDDPM bundle: {self.ddpm} (from {self.ddpm_from})\n"
                f"run_dir: {self.run if self.run is not None else '(none: this notebook alone)'}")


def find_bundle(path: str | Path) -> Path | None:
    """The DDPM bundle at ``path``: the folder itself, its ``final/`` (a pretrain output folder) or its
    ``ddpm/final/`` (a course ``run_dir`` that notebook 01 wrote into); ``None`` when there is none."""
    path = Path(path)
    for candidate in (path, path / "final", path / DDPM_SUBDIR / "final"):
        if (candidate / "ddpm.json").is_file():
            return candidate
    return None


def stage_paths(cfg: ProfileConfig, data_root: str = "", ddpm_dir: str = "", run_dir: str = "",
                dataset: str = "") -> StagePaths:
    """Resolve a notebook's path parameters (empty: the embedded samples and DDPM); ``dataset`` names
    the layout of ``data_root`` (``isprs_potsdam``, ``loveda``, ... as downloaded; see ``data.layouts``).

    The DDPM is ``ddpm_dir`` when given (a bundle, a pretrain output folder or a course run_dir),
    else the one notebook 01 trained into ``run_dir`` when there is one, else the embedded bundle:
    so ``papermill 01 -p run_dir R`` then ``papermill 02 -p run_dir R`` (or ``-p ddpm_dir R``) chain.
    Errors name the folder and what was looked for, before any long cell runs.
    """
    if dataset:
        from ..data.layouts import resolve_dataset

        if not data_root:
            raise ConfigError(f"dataset {dataset!r} needs data_root: the folder you downloaded it to")
        data = Path(data_root).expanduser()
        scheme = resolve_dataset(data, dataset).scheme.name  # errors name the folder and the expected forms
    elif data_root:
        data = Path(data_root).expanduser()
        if not (data / "images").is_dir() or not any((data / m).is_dir() for m in MASK_DIR_NAMES):
            raise DataError(f"data_root {data}: expected a labelled folder with images/ and one of "
                            f"{', '.join(m + '/' for m in MASK_DIR_NAMES)}")
        scheme = dataset_scheme(data, cfg.data.scheme)
    else:
        data, scheme = samples_dir() / "labelled", dataset_scheme(samples_dir(), cfg.data.scheme)
    run = Path(run_dir).expanduser() if run_dir else None
    if ddpm_dir:
        bundle = find_bundle(Path(ddpm_dir).expanduser())
        if bundle is None:
            raise DataError(f"ddpm_dir {ddpm_dir}: no DDPM bundle (looked for ddpm.json in it, in final/ and in "
                            f"{DDPM_SUBDIR}/final/); run notebook 01 with run_dir={ddpm_dir!r} first, or leave "
                            "ddpm_dir empty for the embedded DDPM")
        ddpm, why = bundle, "ddpm_dir"
    elif run is not None and find_bundle(run / DDPM_SUBDIR) is not None:
        ddpm, why = find_bundle(run / DDPM_SUBDIR), "run_dir: trained by notebook 01"
    else:
        ddpm, why = embedded_ddpm_dir(), "embedded"
    return StagePaths(data=data, scheme=scheme, ddpm=ddpm, ddpm_from=why, run=run, dataset=dataset, profile=cfg.name)


# The kit names no public repository yet (README, pyproject): every notebook's badge is built from
# this one constant, so publishing the repository elsewhere changes one line.
COLAB_REPOSITORY = "diffhrnet-lab/diffhrnet_lab"


def colab_badge(notebook: str, repository: str = COLAB_REPOSITORY, branch: str = "main") -> str:
    """The "Open in Colab" badge (markdown) of ``notebooks/<notebook>`` in ``repository``."""
    return ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{repository}/blob/{branch}/notebooks/{notebook})")
