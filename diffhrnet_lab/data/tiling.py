"""Tiling geometry shared by every stage that works on windows of a tile.

Real tiles (LandCover.ai orthophotos are ~9000 x 9500 px) do not fit a network in one piece, and
the outputs of a fully convolutional network are worst near a window's edge, where it saw the
least context.  Windows therefore overlap (:func:`window_starts`), and each window's output is
weighted by a ramp (:func:`blend_weights`) that is 1 in the middle and small at the borders
before the weighted outputs are averaged: seams vanish and every pixel gets the prediction of the
window that saw it best.  Networks with a stride need inputs padded to a multiple of it
(:func:`pad_to`).  DDPM feature extraction (``features/``) and sliding-window inference
(``inference/``) both build on these three functions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def pad_to(x: torch.Tensor, multiple: int, min_size: int = 0) -> tuple[torch.Tensor, int, int]:
    """Pad ``(..., H, W)`` at the bottom/right up to a multiple of ``multiple`` (and at least
    ``min_size``); return the padded tensor and the original ``H, W`` to crop outputs back.

    Reflection keeps image statistics at the border (a zero border is an edge the network never saw
    in training); when the padding is as large as the image itself reflection is undefined and the
    edge is replicated instead."""
    h, w = x.shape[-2:]
    ph = max((-h) % multiple, min_size - h) if min_size > h else (-h) % multiple
    pw = max((-w) % multiple, min_size - w) if min_size > w else (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        squeeze = x.ndim == 3
        x = F.pad(x[None] if squeeze else x, (0, pw, 0, ph), mode=mode)
        x = x[0] if squeeze else x
    return x, h, w


def __getattr__(name: str):
    """Names that moved out of this module keep working from their old import path."""
    if name in ('predict_sliding', 'write_prediction'):
        from ..inference import sliding

        return getattr(sliding, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
