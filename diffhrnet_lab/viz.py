"""Figures people would rather look at than read: tiles beside masks, with a legend."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib

import numpy as np

from .data.io import BandStats
from .data.labels import LabelScheme
from .fileio import atomic_path


def to_rgb(image: np.ndarray, stats: BandStats | None = None, bands: Sequence[int] = (0, 1, 2)) -> np.ndarray:
    """``(C, H, W)`` stored or normalised pixels → displayable ``(H, W, 3)`` float in [0, 1].

    Normalised input (floats in [-1, 1]) is mapped back linearly; stored pixels are stretched by
    ``stats`` (or their dtype range).  Single-band images are shown in grey.
    """
    img = np.asarray(image)
    sel = [b for b in bands if b < img.shape[0]] or [0]
    img = img[sel] if len(sel) == 3 else np.repeat(img[sel[:1]], 3, axis=0)
    if np.issubdtype(img.dtype, np.floating) and stats is None:
        rgb = (img + 1.0) / 2.0
    else:
        st = stats or BandStats.for_dtype(img.dtype, img.shape[0])
        lo = np.asarray([st.low[b] for b in sel] if len(sel) == 3 else [st.low[sel[0]]] * 3)[:, None, None]
        hi = np.asarray([st.high[b] for b in sel] if len(sel) == 3 else [st.high[sel[0]]] * 3)[:, None, None]
        rgb = (img.astype(np.float32) - lo) / np.maximum(hi - lo, 1e-6)
    return np.clip(np.moveaxis(rgb, 0, -1), 0, 1)


def legend_handles(scheme: LabelScheme):
    from matplotlib.patches import Patch

    return [Patch(facecolor=np.array(c) / 255, edgecolor="k", label=n) for n, c in zip(scheme.classes, scheme.colors)]


def plot_tiles_and_masks(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], scheme: LabelScheme,
                         titles: Sequence[str] | None = None, stats: BandStats | None = None, cols: int = 4):
    """A grid of image / mask pairs with one shared class legend; returns the figure."""
    import matplotlib.pyplot as plt

    n = len(images)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows * 2, cols, figsize=(2.6 * cols, 5.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, (img, m) in enumerate(zip(images, masks)):
        r, c = 2 * (i // cols), i % cols
        axes[r, c].imshow(to_rgb(img, stats))
        axes[r, c].set_title(titles[i] if titles else f"tile {i}", fontsize=9)
        axes[r + 1, c].imshow(scheme.decode(m), interpolation="nearest")
    fig.legend(handles=legend_handles(scheme), loc="lower center", ncol=min(len(scheme.classes), 7), fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save atomically and close (figures left open leak memory in long sweeps)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def plot_image_grid(images: Sequence[np.ndarray], cols: int = 8, titles: Sequence[str] | None = None,
                    title: str | None = None, stats: BandStats | None = None):
    """Normalised ``(C, H, W)`` images (e.g. DDPM samples) in a grid; returns the figure."""
    import matplotlib.pyplot as plt

    n = len(images)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows + (0.3 if title else 0)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, img in enumerate(images):
        ax = axes[i // cols, i % cols]
        ax.imshow(to_rgb(img, stats))
        if titles:
            ax.set_title(titles[i], fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
