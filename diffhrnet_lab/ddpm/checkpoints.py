"""Resumable training state, in safetensors and JSON only.

``accelerate``'s ``save_state`` pickles the optimizer; a checkpoint shared between users must not
be able to run code when loaded, so the optimizer state is flattened into tensors (safetensors)
plus a JSON description of its parameter groups.  A checkpoint is a folder written under a hidden
temporary name and renamed into place when complete, so ``checkpoints/step_*`` folders are always
whole; :func:`latest_checkpoint` still verifies each one and falls back past any that fail.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import DataError
from ..fileio import atomic_dir

STEP_DIR = re.compile(r"^step_(\d+)$")


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for k, v in state.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], desc: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    for idx, d in desc.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(d)
    opt.load_state_dict({"state": state, "param_groups": desc["param_groups"]})


def save_checkpoint(ckpt_root: Path, step: int, write: Callable[[Path], None], keep: int) -> Path:
    """Write ``ckpt_root/step_{step}`` through ``write(tmp_dir)``, atomically; keep the last ``keep``."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:07d}"
    with atomic_dir(final) as tmp:
        write(tmp)
    for old in list_checkpoints(ckpt_root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    if not ckpt_root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def checkpoint_step(path: Path) -> int:
    m = STEP_DIR.match(path.name)
    if not m:
        raise DataError(f"{path}: not a checkpoint folder (expected step_NNNNNNN)")
    return int(m.group(1))


def verify_checkpoint(path: Path) -> None:
    """Open every safetensors and JSON file of a checkpoint; raise DataError naming a bad one."""
    if not (path / "state.json").is_file():
        raise DataError(f"{path}: incomplete checkpoint (no state.json)")
    for f in sorted(path.rglob("*")):
        try:
            if f.suffix == ".safetensors":
                load_file(f)
            elif f.suffix == ".json":
                json.loads(f.read_text())
        except (SafetensorError, ValueError, OSError) as exc:
            raise DataError(f"{f}: corrupt or truncated checkpoint file ({str(exc)[:120]})") from None


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest checkpoint that verifies; skipped bad ones are reported with a warning."""
    for path in reversed(list_checkpoints(ckpt_root)):
        try:
            verify_checkpoint(path)
            return path
        except DataError as exc:
            warnings.warn(f"skipping unusable checkpoint: {exc}; falling back to an earlier one", stacklevel=2)
    return None


def resolve_resume(resume: str | None, ckpt_root: Path) -> Path | None:
    """``None`` → start fresh; ``"latest"`` → newest good checkpoint (or fresh if none); else a path."""
    if not resume:
        return None
    if resume == "latest":
        return latest_checkpoint(ckpt_root)
    path = Path(resume)
    verify_checkpoint(path)
    return path


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise DataError(f"{path}: cannot read safetensors file ({str(exc)[:120]})") from None
