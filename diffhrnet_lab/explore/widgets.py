"""ipywidgets explorers for the notebooks, each with a static figure as fallback.

Widgets need a live kernel and a widget manager (JupyterLab has one; Colab needs
``google.colab.output.enable_custom_widget_manager()``, which the notebooks' first cell calls).
Papermill output and GitHub show none of it, so every explorer has a plain matplotlib
counterpart that shows the same information at once.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .analysis import kmeans, pca_rgb
from ..features.extractor import FeatureExtractor
from .viz import to_rgb


class FeatureAtlas:
    """Features of a few tiles for every (t, block), computed once; PCA pictures cached on demand."""

    def __init__(self, extractor: FeatureExtractor, tiles: dict[str, torch.Tensor]):
        self.extractor = extractor
        self.tiles = tiles
        self.features = {name: {k: v[0] for k, v in extractor(img[None]).items()} for name, img in tiles.items()}
        self._pca: dict = {}

    def pca(self, tile: str, t: int, block: int) -> np.ndarray:
        key = (tile, t, block)
        if key not in self._pca:
            self._pca[key] = pca_rgb(self.features[tile][(t, block)])[0]
        return self._pca[key]

    def clusters(self, tile: str, t: int, block: int, k: int = 6) -> np.ndarray:
        return kmeans(self.features[tile][(t, block)], k=k)


def feature_grid(atlas: FeatureAtlas, tile: str, kind: str = "pca"):
    """Static fallback: the tile, then PCA colour maps (``kind="pca"``) or 6 k-means clusters
    (``kind="kmeans"``) for every timestep (rows) and block (columns)."""
    import matplotlib.pyplot as plt

    ts, bs = atlas.extractor.timesteps, atlas.extractor.blocks
    fig, axes = plt.subplots(len(ts), len(bs) + 1, figsize=(2.4 * (len(bs) + 1), 2.4 * len(ts)), squeeze=False)
    for r, t in enumerate(ts):
        axes[r, 0].imshow(to_rgb(atlas.tiles[tile].numpy()))
        axes[r, 0].set_ylabel(f"t = {t}")
        axes[r, 0].set_xticks([]), axes[r, 0].set_yticks([])
        for c, b in enumerate(bs, start=1):
            pic = atlas.pca(tile, t, b) if kind == "pca" else atlas.clusters(tile, t, b)
            axes[r, c].imshow(pic, cmap=None if kind == "pca" else "tab10", interpolation="nearest")
            axes[r, c].set_title(f"block {b}, t = {t}", fontsize=8)
            axes[r, c].axis("off")
    what = "first three principal components" if kind == "pca" else "k-means clusters (k = 6, no labels)"
    fig.suptitle(f"{tile}: {what} of the DDPM decoder features")
    fig.tight_layout()
    return fig


def feature_explorer(atlas: FeatureAtlas):
    """Timestep slider, block selector and tile picker over PCA maps and k-means clusters."""
    import ipywidgets as W
    import matplotlib.pyplot as plt

    t_slider = W.SelectionSlider(options=list(atlas.extractor.timesteps), description="timestep t",
                                 continuous_update=False)
    block = W.Dropdown(options=list(atlas.extractor.blocks), description="block")
    tile = W.Dropdown(options=list(atlas.tiles), description="tile")
    out = W.Output()

    def draw(*_):
        # The figure is set as the Output widget's content rather than shown inside ``with out:``:
        # capturing into an Output widget while a headless client (papermill, nbconvert: nbclient)
        # executes the cell can leave that client waiting forever (jupyter/nbclient#312), which
        # hung `make notebooks` here; the widget looks and redraws the same in JupyterLab and Colab.
        fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
        axes[0].imshow(to_rgb(atlas.tiles[tile.value].numpy()))
        axes[1].imshow(atlas.pca(tile.value, t_slider.value, block.value), interpolation="nearest")
        axes[2].imshow(atlas.clusters(tile.value, t_slider.value, block.value), cmap="tab10", interpolation="nearest")
        for ax, title in zip(axes, ("tile", f"PCA, t={t_slider.value}, block {block.value}", "k-means (6)")):
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        fig.tight_layout()
        out.outputs = ()
        out.append_display_data(fig)
        plt.close(fig)

    for w in (t_slider, block, tile):
        w.observe(draw, names="value")
    draw()
    return W.VBox([W.HBox([t_slider, block, tile]), out])


def probe_plot(results: dict[tuple[int, int], float], blocks: Sequence[int] | None = None):
    """Linear-probe mIoU against timestep, one line per decoder block."""
    import matplotlib.pyplot as plt

    blocks = blocks or sorted({b for _, b in results})
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for b in blocks:
        ts = sorted(t for t, bb in results if bb == b)
        ax.plot(ts, [100 * results[(t, b)] for t in ts], marker="o", label=f"block {b}")
    ax.set_xlabel("timestep t")
    ax.set_ylabel("linear-probe mIoU %")
    ax.set_title("which timesteps carry semantics?")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
