"""Sliding-window inference over whole tiles, with blended stitching and georeferenced output.

A tile of any size is cut into overlapping windows (``data.tiling``), each window goes through the
network, and the window outputs are blended back into one tile: peak memory depends on the window
and the model, not on the tile.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..data.io import Tile, write_geotiff, write_png
from ..data.labels import LabelScheme
from ..data.tiling import blend_weights, pad_to, window_starts


@torch.inference_mode()
def predict_sliding(fn: Callable[..., torch.Tensor], image: torch.Tensor, window: int, overlap: float = 0.25,
                    batch_size: int = 4, streams: Sequence[torch.Tensor] | None = None,
                    strides: Sequence[int] | None = None) -> torch.Tensor:
    """Apply ``fn`` (``(B, C, w, w)`` → ``(B, K, w, w)``) over ``image`` ``(C, H, W)``; return ``(K, H, W)``.

    Images smaller than ``window`` are padded up to it and the output cropped back.  ``streams``
    (precomputed DDPM features of the whole tile, ``(C_b, ceil(H/s_b), ceil(W/s_b))`` at
    ``strides``) are cut with each window and passed as ``fn(batch, stream_batches)``: windows then
    start on multiples of the coarsest stride so that every feature window lies exactly under its
    image window.
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    align = max(strides) if streams else 1
    window = max(align, window - window % align)
    image, h, w = pad_to(image, align, min_size=window)
    H, W = image.shape[-2:]
    step = max(align, int(round(window * (1 - overlap))) // align * align)
    boxes = [(y, x) for y in window_starts(H, window, step) for x in window_starts(W, window, step)]
    weight = blend_weights(window).to(image.device)
    acc = None
    norm = torch.zeros((H, W), device=image.device)
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i:i + batch_size]
        batch = torch.stack([image[:, y:y + window, x:x + window] for y, x in chunk])
        if streams:
            cut = [torch.stack([_feature_window(f, y // s, x // s, window // s) for y, x in chunk]).to(image.device)
                   for f, s in zip(streams, strides)]
            out = fn(batch, cut).float()
        else:
            out = fn(batch).float()
        if acc is None:
            acc = torch.zeros((out.shape[1], H, W), device=image.device)
        for (y, x), o in zip(chunk, out):
            acc[:, y:y + window, x:x + window] += o * weight
            norm[y:y + window, x:x + window] += weight
    assert acc is not None
    return (acc / norm)[:, :h, :w]


def _feature_window(f: torch.Tensor, y: int, x: int, size: int) -> torch.Tensor:
    """``size x size`` window of a feature map at ``(y, x)``, float32, its edge replicated where the
    window reaches past the map (the tile was padded; its features were not, to save memory)."""
    cut = f[:, y:y + size, x:x + size].float()
    ph, pw = size - cut.shape[-2], size - cut.shape[-1]
    if ph or pw:
        cut = torch.nn.functional.pad(cut[None], (0, pw, 0, ph), mode="replicate")[0]
    return cut


def write_prediction(index: np.ndarray, scheme: LabelScheme, like: Tile, tif_path: str | os.PathLike,
                     png_path: str | os.PathLike | None = None) -> Path:
    """Write class indices as a GeoTIFF with ``like``'s CRS/transform (plus a colour PNG)."""
    colormap = {i: tuple(c) for i, c in enumerate(scheme.colors)}
    colormap[scheme.ignore_index] = (0, 0, 0)
    path = write_geotiff(tif_path, index.astype(np.uint8), crs=like.crs, transform=like.transform, colormap=colormap)
    if png_path is not None:
        write_png(png_path, scheme.decode(index))
    return path
