"""Resumable training state, in safetensors and JSON only.

``accelerate``'s ``save_state`` pickles the optimizer; a checkpoint shared between users must not
be able to run code when loaded, so the optimizer state is flattened into tensors (safetensors)
plus a JSON description of its parameter groups.  A checkpoint is a folder written under a hidden
temporary name and renamed into place when complete, so ``checkpoints/step_*`` folders are always
whole; :func:`latest_checkpoint` still verifies each one and falls back past any that fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import ConfigError, DataError
from ..fileio import atomic_dir, load_tensors, save_tensors

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
    # JSON has no tuples: give back the (beta1, beta2) pair the optimizer was built with
    groups = [{k: tuple(v) if k == "betas" and isinstance(v, list) else v for k, v in g.items()}
              for g in desc["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(ckpt_root: Path, step: int, write: Callable[[Path], None], keep: int) -> Path:
    """Write ``ckpt_root/step_{step}`` through ``write(tmp_dir)``, atomically; keep the last ``keep``."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:07d}"
    with atomic_dir(final) as tmp:
        write(tmp)
        fault_point("checkpoint-write", step)
    for old in list_checkpoints(ckpt_root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def fault_point(where: str, step: int) -> None:
    """Crash tests: ``DHL_FAULT=kill:checkpoint-write:4`` SIGKILLs this process while the step-4
    checkpoint is half written (its files in the hidden temporary folder, not yet renamed), the
    moment a pre-emption or power cut would do most harm; ``kill:step:5`` right after optimizer
    step 5, between checkpoints (what a pre-emption at a random moment does, made repeatable).
    Unset, this does nothing."""
    if os.environ.get("DHL_FAULT") == f"kill:{where}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def remove_stale_temporaries(ckpt_root: Path) -> list[Path]:
    """Delete the hidden half-written folders a killed run left behind; return them."""
    if not ckpt_root.is_dir():
        return []
    stale = [p for p in ckpt_root.iterdir() if p.name.startswith(".") and ".tmp-" in p.name]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


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
        for p in remove_stale_temporaries(ckpt_root):
            print(f"[resume] removed {p.name}: a checkpoint an interrupted run had not finished writing")
        return latest_checkpoint(ckpt_root)
    path = Path(resume)
    verify_checkpoint(path)
    return path


def write_state(d: Path, tensors: dict[str, dict[str, torch.Tensor]], optimizer: torch.optim.Optimizer,
                state: dict[str, Any]) -> None:
    """The resumable state of a loop into checkpoint folder ``d``: each ``tensors`` entry as
    ``<name>.safetensors``, the optimizer as tensors + JSON, and ``state.json`` (step, config, ...)."""
    for name, t in tensors.items():
        save_tensors(d / f"{name}.safetensors", t)
    opt_tensors, desc = optimizer_to_tensors(optimizer)
    save_tensors(d / "optimizer.safetensors", opt_tensors)
    (d / "optimizer.json").write_text(json.dumps(desc))
    (d / "state.json").write_text(json.dumps(state, indent=1, default=str))


def read_state(d: Path, optimizer: torch.optim.Optimizer, same: dict[str, Any],
               defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load the optimizer from ``d`` and return its ``state.json``, after checking that every
    setting in ``same`` (``"section.key"`` or ``"key"`` of the saved config → this run's value)
    matches: resuming with another batch size or seed would silently continue a different run.
    A setting the checkpoint predates takes its value in ``defaults`` (what the code did then)."""
    state = json.loads((d / "state.json").read_text())
    for dotted, want in same.items():
        have: Any = state["config"]
        for part in dotted.split("."):
            missing = not isinstance(have, dict) or part not in have
            have = have.get(part) if isinstance(have, dict) else None
        if missing and dotted in (defaults or {}):
            have = defaults[dotted]
        if have != want:
            raise ConfigError(f"{d}: checkpoint has {dotted}={have!r} but this run has {want!r}; resume with the "
                              "same settings or start a new output folder")
    optimizer_from_tensors(optimizer, load_tensors(d / "optimizer.safetensors"),
                           json.loads((d / "optimizer.json").read_text()))
    return state
