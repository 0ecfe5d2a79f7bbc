"""Figures people would rather look at than read: tiles beside masks, with a legend."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence


import numpy as np

from ..data.io import BandStats
from ..data.labels import LabelScheme
from ..fileio import atomic_path


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


def plot_predictions(images: Sequence[np.ndarray], truths: Sequence[np.ndarray], preds: dict[str, Sequence[np.ndarray]],
                     scheme: LabelScheme, titles: Sequence[str] | None = None):
    """One row per tile: image, ground truth, then each method's prediction."""
    import matplotlib.pyplot as plt

    cols = 2 + len(preds)
    fig, axes = plt.subplots(len(images), cols, figsize=(2.6 * cols, 2.6 * len(images) + 0.5), squeeze=False)
    for r, (img, gt) in enumerate(zip(images, truths)):
        panels = [("image" if not titles else titles[r], to_rgb(img)), ("ground truth", scheme.decode(gt))]
        panels += [(name, scheme.decode(p[r])) for name, p in preds.items()]
        for c, (name, pic) in enumerate(panels):
            axes[r, c].imshow(pic, interpolation="nearest")
            axes[r, c].set_title(name, fontsize=9)
            axes[r, c].axis("off")
    fig.legend(handles=legend_handles(scheme), loc="lower center", ncol=min(len(scheme.classes), 7), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def plot_iou_bars(per_method: dict[str, dict[str, float]], title: str = "per-class IoU"):
    """Grouped bars: classes on x, one bar per method."""
    import matplotlib.pyplot as plt

    methods = list(per_method)
    classes = list(next(iter(per_method.values())))
    x = np.arange(len(classes))
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(1.1 * len(classes) + 2, 3.4))
    for i, m in enumerate(methods):
        vals = [100 * (per_method[m][c] if per_method[m][c] == per_method[m][c] else 0) for c in classes]
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, vals, width, label=m)
    ax.set_xticks(x, classes, rotation=30, ha="right")
    ax.set_ylabel("IoU %")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_miou(values: dict[str, float], title: str = "validation mIoU"):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.4 * len(values) + 1.5, 3.2))
    bars = ax.bar(list(values), [100 * v for v in values.values()], color=[f"C{i}" for i in range(len(values))])
    for b, v in zip(bars, values.values()):
        ax.text(b.get_x() + b.get_width() / 2, 100 * v + 1, f"{100 * v:.1f}", ha="center", fontsize=9)
    ax.set_ylabel("mIoU %")
    ax.set_ylim(0, max(100 * max(values.values()) + 10, 10))
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_curves(histories: dict[str, list[dict]]):
    """Training loss and validation mIoU against step, one line per method."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, hist in histories.items():
        a.plot([r["step"] for r in hist], [r["loss"] for r in hist], label=name)
        ev = [r for r in hist if r.get("val_miou") is not None]
        b.plot([r["step"] for r in ev], [100 * r["val_miou"] for r in ev], marker="o", label=name)
    a.set_xlabel("step"), a.set_ylabel("training loss"), a.set_yscale("log"), a.legend(fontsize=8)
    b.set_xlabel("step"), b.set_ylabel("validation mIoU %"), b.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_confusion(cm, classes: Sequence[str], title: str = "confusion matrix (row-normalised)"):
    """Rows: truth, columns: prediction; each row sums to 1 so rare classes are readable too."""
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, dtype=np.float64)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(0.6 * len(classes) + 2.5, 0.6 * len(classes) + 2))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("prediction"), ax.set_ylabel("truth"), ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def architecture_of(model_or_cfg) -> dict:
    """What :func:`plot_architecture` draws, read from a built ``DiffHRNet`` or from a ``ModelConfig``
    (or a ``ProfileConfig``): branch widths per stage, the stages where DDPM features are fused, and
    the head options.  Options missing from an older config read as off."""
    import torch

    from ..errors import ConfigError
    from ..models.fusion import parse_stages
    from ..models.hrnet import HRNetBackbone

    cfg = getattr(model_or_cfg, "model", model_or_cfg)
    backbone = getattr(cfg, "backbone", None)
    if isinstance(cfg, torch.nn.Module):
        if backbone is None:
            raise ConfigError(f"{type(cfg).__name__} has no HRNet backbone to draw (the DDPM pixel classifier has none)")
        uses = getattr(cfg, "uses_streams", bool(cfg.stages))
        return {"variant": backbone.variant, "widths": [list(w) for w in backbone.stage_channels],
                "stages": tuple(cfg.stages), "fusion": getattr(cfg, "fusion_op", ""),
                "head_fusion": uses and getattr(cfg, "head_streams", None) is not None,
                "aux": uses and getattr(cfg, "aux", None) is not None,
                "logit_fusion": uses and getattr(cfg, "aux", None) is not None and bool(getattr(cfg, "logit_fusion", False)),
                "image": 1.0 - (getattr(cfg, "rgb_dropout", 0.0) if uses else 0.0)}
    if cfg.method == "ddpm_mlp":
        raise ConfigError("method ddpm_mlp has no HRNet backbone to draw (DDPM features alone)")
    with torch.device("meta"):
        backbone = HRNetBackbone(cfg.variant, 3)
    fused = cfg.method == "diffhrnet"
    residual = fused and bool(getattr(cfg, "residual", False))
    aux = fused and (getattr(cfg, "aux_weight", 0.0) > 0 or residual)
    return {"variant": cfg.variant, "widths": [list(w) for w in backbone.stage_channels],
            "stages": parse_stages(cfg.stages) if fused else (), "fusion": cfg.fusion if fused else "",
            "head_fusion": fused and getattr(cfg, "head_fusion", 0) > 0, "aux": aux,
            "logit_fusion": aux and (bool(getattr(cfg, "logit_fusion", False)) or residual),
            "image": 1.0 - (getattr(cfg, "rgb_dropout", 0.0) if fused else 0.0)}


def plot_architecture(model_or_cfg):
    """HRNet's four resolution streams (1/4 … 1/32) as lanes over stages 1-4, with a marker (gid
    ``fusion``) wherever DDPM features enter a branch, and the head: streams into the head at 1/4
    (gid ``head_fusion``) and the features-only pixel classifier whose logits are added (gid
    ``logit_fusion``) when the model has them, and what HRNet's stem is given (gid ``image_input``:
    the image, or zeros when ``model.rgb_dropout`` is 1).  Drawn from the model or config, so it
    follows them."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    arch = architecture_of(model_or_cfg)
    fig, ax = plt.subplots(figsize=(11, 4.6))
    ax.set_xlim(-0.9, 6.2), ax.set_ylim(4.6, -1.5), ax.axis("off")
    box_w, box_h = 0.62, 0.5
    feat_colour, hr_colour = "tab:orange", "#dbe8f6"

    def box(x, y, text, colour=hr_colour, w=box_w, h=box_h):
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02", fc=colour, ec="k", lw=0.8))
        ax.text(x, y, text, ha="center", va="center", fontsize=7.5)

    def arrow(x0, y0, x1, y1, **kw):
        ax.annotate("", (x1, y1), (x0, y0), arrowprops=dict(arrowstyle="-|>", lw=0.8, **kw))

    for lane in range(4):
        ax.text(-0.85, lane, f"1/{4 * 2 ** lane}", ha="left", va="center", fontsize=9, weight="bold")
    box(-0.2, 0, "stem\n(÷4)", "#eeeeee", w=0.5)
    # HRNet's input (model.rgb_dropout): the image, the image in some training samples, or zeros
    seen = arch.get("image", 1.0)
    image_text = ("image" if seen >= 1.0 else f"image in {seen:.0%}\nof training samples" if seen > 0
                  else "no image:\nfeatures only")
    ax.text(-0.2, -0.75, image_text, ha="center", va="center", fontsize=7.5, gid="image_input",
            color="k" if seen > 0 else "tab:red")
    arrow(0.05, 0, 1 - box_w / 2, 0)
    for s, widths in enumerate(arch["widths"], start=1):
        ax.text(s, -0.55, f"stage {s}", ha="center", fontsize=9)
        for i, c in enumerate(widths):
            box(s, i, f"{c} ch")
            if s < 4:
                arrow(s + box_w / 2, i, s + 1 - box_w / 2, i)
        if s < 4:
            arrow(s + box_w / 2, len(widths) - 1, s + 1 - box_w / 2, len(widths), ls="--")
        if s in arch["stages"]:
            for i in range(len(widths)):
                ax.plot(s + box_w / 2 + 0.1, i, "o", ms=9, mfc=feat_colour, mec="k", gid="fusion")
    head_x = 5.3
    box(head_x, 1.5, "HRNetV2 head\nall streams\nupsampled to 1/4,\nconcatenated", w=0.95, h=3.4)
    for i in range(4):
        arrow(4 + box_w / 2, i, head_x - 0.48, i)
    ddpm_y = -1.15
    n_feat = len(arch["stages"]) + arch["head_fusion"] + arch["aux"]
    if n_feat:
        ax.text(2.5, ddpm_y, f"frozen DDPM decoder features (t, block)  ·  fusion: {arch['fusion'] or '—'}",
                ha="center", va="center", fontsize=9, color="k",
                bbox=dict(boxstyle="round", fc=feat_colour, alpha=0.35))
        for s in arch["stages"]:
            ax.plot([s + box_w / 2 + 0.1] * 2, [ddpm_y + 0.2, -0.2], color=feat_colour, lw=1, ls=":")
    if arch["head_fusion"]:
        ax.plot(head_x - 0.55, 0, "s", ms=9, mfc=feat_colour, mec="k", gid="head_fusion")
        ax.plot([head_x - 0.55] * 2, [ddpm_y + 0.2, -0.2], color=feat_colour, lw=1, ls=":")
    if arch["aux"]:
        box(4.1, 4.2, "features-only pixel classifier", feat_colour, w=1.5, h=0.45)
        if arch["logit_fusion"]:
            ax.plot(head_x, 3.75, "P", ms=11, mfc="w", mec="k", gid="logit_fusion")
            arrow(4.85, 4.2, head_x - 0.1, 3.8)
            ax.text(head_x + 0.2, 3.95, "logits added", fontsize=7.5)
        else:
            ax.text(4.1, 4.55, "(training loss only)", ha="center", fontsize=7)
    legend = ["●  DDPM features fused into every branch of that stage (resized to the branch)"] if arch["stages"] else []
    legend += ["■  every stream, projected, enters the head at 1/4"] if arch["head_fusion"] else []
    ax.text(-0.85, 4.45, "\n".join(legend), fontsize=7.5, va="center")
    n_points = sum(len(arch["widths"][s - 1]) for s in arch["stages"])
    ax.set_title(f"HRNet {arch['variant']}: four resolution streams; DDPM features fused at stage(s) "
                 f"{', '.join(map(str, arch['stages'])) or 'none'} ({n_points} fusion points)", fontsize=10)
    fig.tight_layout()
    return fig
