"""Sliding-window inference over whole tiles, with blended stitching and georeferenced output.

Real tiles (LandCover.ai orthophotos are ~9000 x 9500 px) do not fit a network in one piece, and
the outputs of a fully convolutional network are worst near a window's edge, where it saw the
least context.  Windows therefore overlap, and each window's output is weighted by a ramp that
is 1 in the middle and small at the borders before the weighted outputs are averaged: seams
vanish and every pixel gets the prediction of the window that saw it best.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .io import Tile, write_geotiff, write_png
from .labels import LabelScheme


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets covering ``[0, length)``; the last window is flush with the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def blend_weights(window: int, width: int | None = None, floor: float = 1e-2) -> torch.Tensor:
    """Separable triangular ramp over ``window x (width or window)``: 1 at the centre, ``floor`` at
    the border (never 0)."""
    def ramp(n: int) -> torch.Tensor:
        r = torch.arange(n, dtype=torch.float32)
        return (1.0 - (r - (n - 1) / 2).abs() / (n / 2)).clamp_min(floor)

    return ramp(window)[:, None] * ramp(width or window)[None, :]


@torch.inference_mode()
def predict_sliding(fn: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, window: int,
                    overlap: float = 0.25, batch_size: int = 4) -> torch.Tensor:
    """Apply ``fn`` (``(B, C, w, w)`` → ``(B, K, w, w)``) over ``image`` ``(C, H, W)``; return ``(K, H, W)``.

    Images smaller than ``window`` are reflect-padded up to it and the output cropped back.
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    c, h, w = image.shape
    ph, pw = max(0, window - h), max(0, window - w)
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        image = torch.nn.functional.pad(image[None], (0, pw, 0, ph), mode=mode)[0]
    H, W = image.shape[-2:]
    stride = max(1, int(round(window * (1 - overlap))))
    boxes = [(y, x) for y in window_starts(H, window, stride) for x in window_starts(W, window, stride)]
    weight = blend_weights(window).to(image.device)
    acc = None
    norm = torch.zeros((H, W), device=image.device)
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i:i + batch_size]
        batch = torch.stack([image[:, y:y + window, x:x + window] for y, x in chunk])
        out = fn(batch).float()
        if acc is None:
            acc = torch.zeros((out.shape[1], H, W), device=image.device)
        for (y, x), o in zip(chunk, out):
            acc[:, y:y + window, x:x + window] += o * weight
            norm[y:y + window, x:x + window] += weight
    assert acc is not None
    return (acc / norm)[:, :h, :w]


def write_prediction(index: np.ndarray, scheme: LabelScheme, like: Tile, tif_path: str | os.PathLike,
                     png_path: str | os.PathLike | None = None) -> Path:
    """Write class indices as a GeoTIFF with ``like``'s CRS/transform (plus a colour PNG)."""
    colormap = {i: tuple(c) for i, c in enumerate(scheme.colors)}
    colormap[scheme.ignore_index] = (0, 0, 0)
    path = write_geotiff(tif_path, index.astype(np.uint8), crs=like.crs, transform=like.transform, colormap=colormap)
    if png_path is not None:
        write_png(png_path, scheme.decode(index))
    return path
