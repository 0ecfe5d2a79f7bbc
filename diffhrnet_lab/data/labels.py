"""Label schemes as data: class names, plot colours and how masks are stored on disk.

Remote-sensing datasets store labels in two ways: as RGB colour-coded PNGs (ISPRS, Dubai aerial)
or as single-band index rasters (LoveDA, LandCover.ai, the kit's own samples).  A
:class:`LabelScheme` turns either into a ``(H, W)`` array of class indices in ``0..K-1`` plus
``ignore_index`` for pixels that count in neither the loss nor any metric, and back into colours
for plots.  A colour or index not in the scheme is an error that lists every offender with its
pixel count: guessing would silently corrupt the metrics.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping

import numpy as np

from ..errors import ConfigError, DataError

RGB = tuple[int, int, int]
IGNORE_INDEX = 255


@dataclass(frozen=True)
class LabelScheme:
    """How one dataset's masks map to classes.

    ``encoding="rgb"``: class ``i`` is stored as colour ``colors[i]``; ``ignore_colors`` map to
    ``ignore_index``.  ``encoding="index"``: stored value ``v`` maps to ``index_map[v]`` (identity
    when ``index_map`` is empty); ``ignore_values`` map to ``ignore_index``.
    """

    name: str
    classes: tuple[str, ...]
    colors: tuple[RGB, ...]
    encoding: Literal["rgb", "index"]
    ignore_index: int = IGNORE_INDEX
    ignore_colors: tuple[RGB, ...] = ()
    index_map: Mapping[int, int] = field(default_factory=dict)
    ignore_values: tuple[int, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        if len(self.classes) != len(self.colors):
            raise ConfigError(f"scheme {self.name}: {len(self.classes)} classes but {len(self.colors)} colours")
        if self.ignore_index < len(self.classes):
            raise ConfigError(f"scheme {self.name}: ignore_index {self.ignore_index} collides with a class")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    # -- encoding -----------------------------------------------------------------------------
    def encode(self, mask: np.ndarray, source: str = "<array>") -> np.ndarray:
        """Stored mask → ``int64 (H, W)`` class indices with ``ignore_index``.

        ``mask`` is ``(H, W)`` for index schemes and ``(3, H, W)`` or ``(H, W, 3)`` for RGB ones.
        ``source`` names the file in error messages.
        """
        if self.encoding == "rgb":
            return self._encode_rgb(mask, source)
        return self._encode_index(mask, source)

    def _encode_rgb(self, mask: np.ndarray, source: str) -> np.ndarray:
        if mask.ndim == 3 and mask.shape[0] in (3, 4):
            mask = np.moveaxis(mask[:3], 0, -1)  # band-first, as rasterio reads; wins when ambiguous
        if mask.ndim != 3 or mask.shape[-1] < 3:
            raise DataError(f"{source}: scheme '{self.name}' expects an RGB colour mask, got shape {mask.shape}")
        rgb = mask[..., :3].astype(np.int64)
        keys = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        table = {_key(c): i for i, c in enumerate(self.colors)}
        table.update({_key(c): self.ignore_index for c in self.ignore_colors})
        uniq, inverse, counts = np.unique(keys.ravel(), return_inverse=True, return_counts=True)
        unknown = [(int(u), int(n)) for u, n in zip(uniq, counts) if int(u) not in table]
        if unknown:
            listed = ", ".join(f"RGB{_unkey(u)}: {n} px" for u, n in sorted(unknown, key=lambda t: -t[1]))
            raise DataError(
                f"{source}: {len(unknown)} colour(s) not in label scheme '{self.name}': {listed}. "
                f"Known colours: {self.legend()}"
            )
        lut = np.array([table[int(u)] for u in uniq], dtype=np.int64)
        return lut[inverse].reshape(keys.shape)

    def _encode_index(self, mask: np.ndarray, source: str) -> np.ndarray:
        if mask.ndim == 3 and mask.shape[0] == 1:
            mask = mask[0]
        if mask.ndim != 2:
            raise DataError(f"{source}: scheme '{self.name}' expects a single-band index mask, got shape {mask.shape}")
        if not np.issubdtype(mask.dtype, np.integer):
            if not np.all(np.mod(mask, 1) == 0):
                raise DataError(f"{source}: index mask has non-integer values")
            mask = mask.astype(np.int64)
        valid = dict(self.index_map) if self.index_map else {i: i for i in range(self.num_classes)}
        valid.update({v: self.ignore_index for v in self.ignore_values})
        uniq, inverse, counts = np.unique(mask.ravel(), return_inverse=True, return_counts=True)
        unknown = [(int(u), int(n)) for u, n in zip(uniq, counts) if int(u) not in valid]
        if unknown:
            listed = ", ".join(f"value {u}: {n} px" for u, n in unknown)
            raise DataError(
                f"{source}: {len(unknown)} value(s) not in label scheme '{self.name}': {listed}. "
                f"Valid values: {sorted(valid)}"
            )
        lut = np.array([valid[int(u)] for u in uniq], dtype=np.int64)
        return lut[inverse].reshape(mask.shape)

    # -- decoding -----------------------------------------------------------------------------
    def decode(self, index: np.ndarray) -> np.ndarray:
        """Class indices ``(H, W)`` → ``uint8 (H, W, 3)`` colours; ignore pixels become black."""
        index = np.asarray(index)
        palette = np.zeros((max(self.ignore_index, self.num_classes) + 1, 3), dtype=np.uint8)
        palette[: self.num_classes] = np.array(self.colors, dtype=np.uint8)
        palette[self.ignore_index] = self.ignore_colors[0] if self.ignore_colors else (0, 0, 0)
        out_of_range = (index < 0) | (index >= len(palette))
        if out_of_range.any():
            bad = np.unique(index[out_of_range])[:10].tolist()
            raise DataError(f"scheme '{self.name}': class indices {bad} out of range 0..{self.num_classes - 1}")
        return palette[index]

    def to_stored(self, index: np.ndarray) -> np.ndarray:
        """Class indices → what this scheme stores on disk (inverse of :meth:`encode`)."""
        if self.encoding == "rgb":
            return self.decode(index)
        inverse = {c: v for v, c in (self.index_map or {i: i for i in range(self.num_classes)}).items()}
        ignore_value = self.ignore_values[0] if self.ignore_values else self.ignore_index
        lut = np.full(max(self.ignore_index, self.num_classes) + 1, ignore_value, dtype=np.int64)
        for c, v in inverse.items():
            lut[c] = v
        return lut[index]

    def legend(self) -> str:
        parts = [f"{i} {n} RGB{tuple(c)}" for i, (n, c) in enumerate(zip(self.classes, self.colors))]
        if self.ignore_colors:
            parts.append("ignore " + " ".join(f"RGB{tuple(c)}" for c in self.ignore_colors))
        return "; ".join(parts)


def _key(c: RGB) -> int:
    return (int(c[0]) << 16) | (int(c[1]) << 8) | int(c[2])


def _unkey(k: int) -> RGB:
    return ((k >> 16) & 255, (k >> 8) & 255, k & 255)


SAMPLES = LabelScheme(
    name="samples",
    classes=("impervious", "building", "low_vegetation", "tree", "car", "water", "bare_soil"),
    colors=((140, 140, 140), (215, 55, 45), (160, 225, 95), (25, 115, 35), (255, 215, 0), (35, 95, 215), (175, 125, 75)),
    encoding="index",
    ignore_values=(255,),
    description="The kit's generated aerial scenes (diffhrnet_lab.data.samples): ISPRS classes plus water and bare soil.",
)

DUBAI = LabelScheme(
    name="dubai",
    classes=("building", "land", "road", "vegetation", "water"),
    colors=((60, 16, 152), (132, 41, 246), (110, 193, 228), (254, 221, 58), (226, 169, 41)),
    encoding="rgb",
    ignore_colors=((155, 155, 155), (0, 0, 0)),
    description="Humans in the Loop / MBRSC Dubai aerial imagery: 5 classes; 'Unlabeled' grey and black are ignored.",
)

ISPRS = LabelScheme(
    name="isprs",
    classes=("impervious", "building", "low_vegetation", "tree", "car", "clutter"),
    colors=((255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)),
    encoding="rgb",
    ignore_colors=((0, 0, 0),),
    description="ISPRS Vaihingen/Potsdam; black marks the eroded boundaries of the 'noBoundary' ground truth.",
)

ISPRS_MMSEG = LabelScheme(
    name="isprs_mmseg",
    classes=ISPRS.classes,
    colors=ISPRS.colors,
    encoding="index",
    index_map={v: v - 1 for v in range(1, 7)},
    ignore_values=(0, 255),
    description="ISPRS Vaihingen/Potsdam as mmsegmentation's converters write them (ann_dir/*.png): 0 = boundary "
                "(ignored), 1..6 = impervious, building, low vegetation, tree, car, clutter (what reduce_zero_label "
                "turns into 0..5 + 255); 255 is ignored too.",
)

LOVEDA = LabelScheme(
    name="loveda",
    classes=("background", "building", "road", "water", "barren", "forest", "agriculture"),
    colors=((255, 255, 255), (255, 0, 0), (255, 255, 0), (0, 0, 255), (159, 129, 183), (0, 255, 0), (255, 195, 128)),
    encoding="index",
    index_map={v: v - 1 for v in range(1, 8)},
    ignore_values=(0,),
    description="LoveDA Urban/Rural: stored 1..7, 0 is no-data (ignored).",
)

LANDCOVER_AI = LabelScheme(
    name="landcover_ai",
    classes=("background", "building", "woodland", "water", "road"),
    colors=((200, 200, 200), (220, 30, 30), (20, 120, 20), (30, 90, 220), (250, 200, 60)),
    encoding="index",
    description="LandCover.ai v1: GeoTIFF index masks 0..4.",
)

SCHEMES: dict[str, LabelScheme] = {s.name: s for s in (SAMPLES, DUBAI, ISPRS, ISPRS_MMSEG, LOVEDA, LANDCOVER_AI)}


def get_scheme(name: str | LabelScheme) -> LabelScheme:
    if isinstance(name, LabelScheme):
        return name
    try:
        return SCHEMES[name]
    except KeyError:
        raise ConfigError(f"unknown label scheme '{name}'; known: {', '.join(SCHEMES)}") from None


def dataset_scheme(root: str | os.PathLike, default: str) -> str:
    """The label scheme of a labelled folder, so that pointing a notebook at a dataset needs no scheme.

    Its ``manifest.json``'s ``scheme`` (the embedded samples have one), else a scheme whose name starts
    the folder's name (``dubai_aerial`` → ``dubai``), else ``default`` (the profile's ``data.scheme``).
    """
    root = Path(root)
    manifest = root / "manifest.json"
    if manifest.is_file():
        scheme = json.loads(manifest.read_text()).get("scheme")
        if scheme in SCHEMES:
            return scheme
    return next((name for name in SCHEMES if root.name.lower().startswith(name)), default)
