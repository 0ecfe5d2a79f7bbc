"""Reading and writing tiles through rasterio: GeoTIFF, PNG and JPEG alike.

Images are returned band-first, ``(C, H, W)``, in their stored dtype (uint8, uint16, float), with
the CRS and affine transform when the file has them, so predictions can be written back in the
same place on the ground.  Normalisation to the model's ``[-1, 1]`` range is separate
(:class:`BandStats`): DDPMs are trained on inputs in ``[-1, 1]`` (Ho et al. 2020, §4), and
Diff-HRNet feeds the *same* tensor to the DDPM and to HRNet, so one normalisation serves both.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from ..errors import DataError
from ..fileio import atomic_path
from .labels import LabelScheme

TILE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


@dataclass
class Tile:
    """One raster: pixels ``(C, H, W)`` and, when present, its georeferencing."""

    image: np.ndarray
    path: Path | None = None
    crs: Any = None
    transform: Any = None
    nodata: float | None = None

    @property
    def bands(self) -> int:
        return int(self.image.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.image.shape[1]), int(self.image.shape[2])

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None and self.transform is not None


def list_tiles(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """All tile files under ``folder`` in a stable order; an empty or missing folder is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder does not exist")
    pattern = "**/*" if recursive else "*"
    files = sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in TILE_SUFFIXES
                   and not p.name.startswith("."))
    if not files:
        raise DataError(f"{folder}: no tiles found (looked for {', '.join(TILE_SUFFIXES)})")
    return files


def read_tile(path: str | os.PathLike, expected_bands: int | None = None,
              bands: Sequence[int] | None = None) -> Tile:
    """Read a whole tile; errors name the file.

    ``bands`` selects 1-based band indexes (rasterio's convention); ``expected_bands`` checks the
    count after selection, so a model trained on 4-band imagery is not fed RGB by mistake.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                indexes = list(bands) if bands is not None else list(range(1, src.count + 1))
                bad = [b for b in indexes if not 1 <= b <= src.count]
                if bad:
                    raise DataError(f"{path}: band(s) {bad} requested but the file has {src.count} band(s)")
                image = src.read(indexes)
                crs = src.crs
                transform = src.transform if src.crs is not None or not src.transform.is_identity else None
                nodata = src.nodata
    except DataError:
        raise
    except (RasterioError, OSError) as exc:
        raise DataError(f"{path}: cannot read tile ({_short(exc)}); the file may be truncated or not a raster") from None
    if expected_bands is not None and image.shape[0] != expected_bands:
        raise DataError(f"{path}: has {image.shape[0]} band(s), expected {expected_bands}")
    return Tile(image=image, path=path, crs=crs, transform=transform, nodata=nodata)


def read_mask_raw(path: str | os.PathLike, expand_palette: bool = True) -> np.ndarray:
    """Read a mask as stored: ``(H, W)`` for index masks, ``(3, H, W)`` for colour masks.

    With ``expand_palette``, palette ("P" mode) PNGs are expanded through their colour table, since
    a colour-coded scheme cares about the colour, not the palette slot (Dubai Tile_2 and Tile_4 are
    stored this way).  Index masks that merely carry a colour table for viewers keep their values.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: mask file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                data = src.read()
                colormap = None
                if src.count == 1 and expand_palette:
                    try:
                        colormap = src.colormap(1)
                    except ValueError:
                        colormap = None
    except (RasterioError, OSError) as exc:
        raise DataError(f"{path}: cannot read mask ({_short(exc)}); the file may be truncated or not a raster") from None
    if colormap:
        lut = np.zeros((max(256, max(colormap) + 1), 3), dtype=np.uint8)
        for k, rgba in colormap.items():
            lut[k] = rgba[:3]
        return np.moveaxis(lut[data[0]], -1, 0)
    if data.shape[0] == 1:
        return data[0]
    return data[:3]


def read_mask(path: str | os.PathLike, scheme: "LabelScheme") -> np.ndarray:
    """Read a mask file and encode it with ``scheme``: ``int64 (H, W)`` class indices."""
    return scheme.encode(read_mask_raw(path, expand_palette=scheme.encoding == "rgb"), source=str(path))


def write_geotiff(path: str | os.PathLike, array: np.ndarray, crs: Any = None, transform: Any = None,
                  nodata: float | None = None, compress: str = "deflate",
                  colormap: dict[int, tuple[int, int, int]] | None = None) -> Path:
    """Write ``(C, H, W)`` or ``(H, W)`` atomically as a tiled, compressed GeoTIFF."""
    path = Path(path)
    arr = array[None] if array.ndim == 2 else array
    profile: dict[str, Any] = dict(
        driver="GTiff", count=arr.shape[0], height=arr.shape[1], width=arr.shape[2], dtype=arr.dtype,
        compress=compress, predictor=2 if np.issubdtype(arr.dtype, np.integer) else 3,
    )
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    if nodata is not None:
        profile["nodata"] = nodata
    with atomic_path(path) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write(arr)
                if colormap is not None:
                    dst.write_colormap(1, colormap)
    return path


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write an ``(H, W, 3)`` uint8 picture atomically as PNG."""
    arr = np.moveaxis(np.asarray(rgb, dtype=np.uint8), -1, 0)
    with atomic_path(path) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(tmp, "w", driver="PNG", count=arr.shape[0], height=arr.shape[1],
                               width=arr.shape[2], dtype="uint8") as dst:
                dst.write(arr)
    Path(str(path) + ".aux.xml").unlink(missing_ok=True)
    return Path(path)


@dataclass
class BandStats:
    """Per-band statistics: ``low``/``high`` map to ``-1``/``+1``; mean/std are for reporting.

    For uint8 imagery ``low=0, high=255`` (the full range, as DDPMs are usually trained).  For
    uint16 or float imagery, whose useful range is a small part of the type's, the 0.5th and
    99.5th percentiles of a pixel sample are used instead, per band.
    """

    low: list[float]
    high: list[float]
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)

    @property
    def bands(self) -> int:
        return len(self.low)

    def normalise(self, image: np.ndarray, source: str = "<array>") -> np.ndarray:
        """Stored pixels ``(C, H, W)`` → float32 in ``[-1, 1]`` (values beyond the range clipped)."""
        if image.shape[0] != self.bands:
            raise DataError(f"{source}: has {image.shape[0]} band(s), the normalisation statistics have {self.bands}")
        low = np.asarray(self.low, dtype=np.float32)[:, None, None]
        high = np.asarray(self.high, dtype=np.float32)[:, None, None]
        x = (image.astype(np.float32) - low) / np.maximum(high - low, 1e-6)
        return np.clip(x * 2.0 - 1.0, -1.0, 1.0)

    def denormalise(self, x: np.ndarray) -> np.ndarray:
        low = np.asarray(self.low, dtype=np.float32)[:, None, None]
        high = np.asarray(self.high, dtype=np.float32)[:, None, None]
        return (np.asarray(x, dtype=np.float32) + 1.0) / 2.0 * (high - low) + low

    def to_dict(self) -> dict[str, list[float]]:
        return {"low": self.low, "high": self.high, "mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, d: dict[str, list[float]]) -> "BandStats":
        return cls(low=list(d["low"]), high=list(d["high"]), mean=list(d.get("mean", [])), std=list(d.get("std", [])))

    @classmethod
    def for_dtype(cls, dtype: np.dtype, bands: int) -> "BandStats":
        info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
        hi = float(info.max) if info is not None else 1.0
        return cls(low=[0.0] * bands, high=[hi] * bands)


def compute_band_stats(paths: Iterable[str | os.PathLike], max_pixels_per_tile: int = 65536,
                       expected_bands: int | None = None) -> BandStats:
    """Band statistics of the tiles at ``paths``, read one at a time (see :func:`band_stats_of`)."""

    def tiles():
        bands = expected_bands
        for p in paths:
            tile = read_tile(p, expected_bands=bands)
            bands = tile.bands
            yield str(p), tile.image

    return band_stats_of(tiles(), max_pixels_per_tile)


def band_stats_of(images: Iterable[tuple[str, np.ndarray]], max_pixels_per_tile: int = 65536) -> BandStats:
    """Band statistics from a strided pixel sample of each ``(source, (C, H, W) image)``.

    uint8 tiles keep the full ``[0, 255]`` range; other dtypes use robust percentiles.  All tiles
    must share band count and dtype: mixing them is almost always a mistake in the folder.
    Datasets that already hold their tiles in memory pass them here instead of reading them twice.
    """
    samples: list[np.ndarray] = []
    dtype = bands = None
    for source, image in images:
        if dtype is not None and image.dtype != dtype:
            raise DataError(f"{source}: dtype {image.dtype} differs from the other tiles' {dtype}")
        if bands is not None and image.shape[0] != bands:
            raise DataError(f"{source}: has {image.shape[0]} band(s), expected {bands}")
        dtype, bands = image.dtype, image.shape[0]
        flat = image.reshape(bands, -1)
        step = max(1, flat.shape[1] // max_pixels_per_tile)
        samples.append(flat[:, ::step].astype(np.float64))
    if not samples:
        raise DataError("no tiles given to compute band statistics from")
    pix = np.concatenate(samples, axis=1)
    mean, std = pix.mean(axis=1).tolist(), pix.std(axis=1).tolist()
    if dtype == np.uint8:
        low, high = [0.0] * bands, [255.0] * bands
    else:
        low = np.percentile(pix, 0.5, axis=1).tolist()
        high = np.percentile(pix, 99.5, axis=1).tolist()
        for b, (lo, hi) in enumerate(zip(low, high)):
            if hi <= lo:
                raise DataError(f"band {b + 1} is constant ({lo}) across all tiles: nothing to normalise "
                                "(all nodata?)")
    return BandStats(low=low, high=high, mean=mean, std=std)


def _short(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return msg[:200]
