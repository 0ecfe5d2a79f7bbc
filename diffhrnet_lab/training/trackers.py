"""Dashboards: the training loops log through accelerate's trackers (TensorBoard, W&B, MLflow).

Users already watch runs in TensorBoard or Weights & Biases; the kit writes there through
``accelerate`` (``Accelerator(log_with=...)``, ``init_trackers``, ``log``, ``end_training``) so
that multi-process runs log once, from the main process, with no code of our own per backend.

The loops call :class:`Tracking` only where they already hold Python floats (the log interval's
flush, validation): reading a loss back from the GPU every step would add a host sync per step,
which the loops avoid on purpose.  With ``log_with=""`` (the default) every method is a no-op.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from accelerate import Accelerator

from ..errors import ConfigError

TRACKERS = ("tensorboard", "wandb", "mlflow")
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_log_with(log_with: str) -> str | None:
    """``""`` → ``None``; a tracker whose package is missing is a :class:`ConfigError` that says
    what to install, before any training starts (accelerate would only warn and log nothing)."""
    if not log_with:
        return None
    if log_with not in TRACKERS:
        raise ConfigError(f"log_with '{log_with}': choose one of {', '.join(TRACKERS)} (or empty for none)")
    import importlib.util

    if importlib.util.find_spec(_PACKAGES[log_with]) is None:
        raise ConfigError(f"log_with '{log_with}' needs the '{_PACKAGES[log_with]}' package: "
                          f"pip install {_PACKAGES[log_with]}  (or pip install 'diffhrnet_lab[track]')")
    return log_with


def logging_dir(out: str | Path) -> str:
    """Where file-based trackers write: ``<run>/logs/<loop>/`` (``tensorboard --logdir <run>/logs``)."""
    return str(Path(out) / "logs")


def flat_config(cfg: Any, prefix: str = "") -> dict[str, int | float | str | bool]:
    """A (nested) dataclass config as ``section.field`` → scalar: what every tracker's hparams accept."""
    out: dict[str, int | float | str | bool] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(v):
            out.update(flat_config(v, key + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


class Tracking:
    """The trackers of one training loop (``log_with`` as the Accelerator was made with)."""

    def __init__(self, accelerator: Accelerator, log_with: str, project: str, config: Any):
        self.accelerator, self.on = accelerator, bool(log_with)
        self.kind = log_with
        if self.on:
            accelerator.init_trackers(project, config=flat_config(config))

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.on:
            self.accelerator.log({k: float(v) for k, v in values.items() if v is not None}, step=step)

    def validation(self, step: int, val: dict, ds, preds: Sequence[np.ndarray], n_images: int = 3) -> None:
        """Validation mIoU / OA / per-class IoU, and image | mask | prediction strips of the first
        ``n_images`` validation tiles (TensorBoard and W&B)."""
        if not self.on:
            return
        self.scalars({"val/miou": val["miou"], "val/oa": val["oa"],
                      **{f"val/iou/{c}": v for c, v in (val.get("iou") or {}).items()}}, step)
        if not self.accelerator.is_main_process:
            return
        strips = {f"val/prediction/{ds.pairs[i].id}": prediction_strip(ds.images[i], ds.masks[i], preds[i], ds.scheme)
                  for i in range(min(n_images, len(preds)))}
        if self.kind == "tensorboard":
            writer = self.accelerator.get_tracker("tensorboard", unwrap=True)
            for tag, img in strips.items():
                writer.add_image(tag, img, step, dataformats="HWC")
        elif self.kind == "wandb":
            self.accelerator.get_tracker("wandb").log_images(strips, step=step)

    def end(self) -> None:
        if self.on:
            self.accelerator.end_training()


def prediction_strip(image: np.ndarray, mask: np.ndarray, pred: np.ndarray, scheme) -> np.ndarray:
    """``uint8 (H, 3W, 3)``: the tile (first three bands, from the normalised [-1, 1]), the mask
    and the prediction in the scheme's colours, side by side."""
    rgb = image[:3] if image.shape[0] >= 3 else np.repeat(image[:1], 3, axis=0)
    rgb = np.clip((np.moveaxis(rgb, 0, -1) + 1) * 127.5, 0, 255).astype(np.uint8)
    return np.concatenate([rgb, scheme.decode(mask), scheme.decode(pred)], axis=1)
