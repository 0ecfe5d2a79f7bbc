"""Datasets: labelled tiles for fine-tuning, an unlabelled pool for DDPM pretraining.

Two rules from the field shape this module:

* **Split by scene, never by crop.**  Neighbouring crops of one scene share buildings and roads;
  a random split of crops leaks the validation set into training.  Every :class:`Pair` carries a
  ``group`` (the scene: the sub-folder for nested datasets such as Dubai's ``Tile_N/``, the file
  for flat ones) and :func:`split_by_group` / :func:`label_budget` work on groups.
* **Augment image and mask identically.**  One random generator per sample draws the crop offset
  and the dihedral (flip/rot90) transform, and both arrays go through the same indexing.  The
  generator is seeded from ``(seed, epoch, index)``, so data order and crops are reproducible with
  any number of data-loader workers and after a resume.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

from ..errors import DataError
from .batch_pool import PooledBatch, resolve, worker_slot
from .io import TILE_SUFFIXES, BandStats, band_stats_of, list_tiles, read_mask, read_tile
from .labels import LabelScheme, get_scheme

MASK_DIR_NAMES = ("masks", "labels", "gt", "annotations")


@dataclass(frozen=True)
class Pair:
    """An image, its mask (``None`` for unlabelled data) and the scene it belongs to."""

    image: Path
    mask: Path | None
    group: str
    id: str


def find_pairs(root: str | os.PathLike, images: str = "images", masks: str | None = None,
               require_masks: bool = True) -> list[Pair]:
    """Match ``root/images/**/X.*`` with ``root/<masks>/**/X.*`` by relative path and stem.

    ``masks`` defaults to the first of ``masks``, ``labels``, ``gt``, ``annotations`` that exists.
    With ``require_masks=False`` a folder with no mask folder yields pairs with ``mask=None``
    (prediction only); otherwise a missing mask folder or mask file is an error listing them.
    """
    root = Path(root)
    img_dir = root / images
    if not img_dir.is_dir():
        raise DataError(f"{root}: no '{images}/' folder (expected {root}/{images}/ and {root}/masks/)")
    if masks is None:
        masks = next((m for m in MASK_DIR_NAMES if (root / m).is_dir()), None)
    mask_dir = root / masks if masks else None
    if mask_dir is None or not mask_dir.is_dir():
        if require_masks:
            raise DataError(f"{root}: no mask folder (looked for {', '.join(MASK_DIR_NAMES)})")
        mask_dir = None
    image_files = list_tiles(img_dir)
    mask_index: dict[str, Path] = {}
    if mask_dir is not None:
        for m in mask_dir.rglob("*"):
            if m.is_file() and m.suffix.lower() in TILE_SUFFIXES:
                mask_index[m.relative_to(mask_dir).with_suffix("").as_posix()] = m
    pairs, missing = [], []
    for f in image_files:
        rel = f.relative_to(img_dir).with_suffix("")
        key = rel.as_posix()
        group = rel.parts[0] if len(rel.parts) > 1 else rel.name
        mask = mask_index.pop(key, None)
        if mask is None and mask_dir is not None:
            missing.append(str(f))
        pairs.append(Pair(image=f, mask=mask, group=group, id=key))
    if missing and require_masks:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(f"{mask_dir}: no mask for {len(missing)} image(s): {shown}")
    if mask_index and require_masks:
        extra = ", ".join(str(p) for p in list(mask_index.values())[:5])
        raise DataError(f"{img_dir}: no image for {len(mask_index)} mask(s): {extra}")
    return pairs


def groups_of(pairs: Sequence[Pair]) -> list[str]:
    return sorted({p.group for p in pairs})


def split_by_group(pairs: Sequence[Pair], val_groups: Sequence[str] | None = None,
                   val_fraction: float = 0.2, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """Train/validation split by scene: named ``val_groups``, or a seeded fraction of the groups."""
    groups = groups_of(pairs)
    if val_groups is None:
        if len(groups) < 2:
            raise DataError(f"cannot split {len(groups)} scene(s) into train and validation")
        n_val = min(len(groups) - 1, max(1, round(val_fraction * len(groups))))
        order = np.random.default_rng(seed).permutation(len(groups))
        val = {groups[i] for i in order[:n_val]}
    else:
        unknown = sorted(set(val_groups) - set(groups))
        if unknown:
            raise DataError(f"validation scene(s) {unknown} not found; scenes are: {groups}")
        val = set(val_groups)
    return [p for p in pairs if p.group not in val], [p for p in pairs if p.group in val]


def split_test(pairs: Sequence[Pair], fraction: float, seed: int = 0,
               keep: Sequence[str] = ()) -> tuple[list[Pair], list[Pair]]:
    """(rest, test): a seeded ``fraction`` of the scenes (at least one) kept out of training and of
    validation, so that a best step picked on the validation scenes is scored on scenes the
    selection never looked at.  Drawn with its own seed stream, so the choice does not depend on
    ``val_fraction``.  Scenes named in ``keep`` (chosen for training or validation) are never drawn."""
    if fraction <= 0:
        return list(pairs), []
    all_groups = groups_of(pairs)
    groups = [g for g in all_groups if g not in set(keep)]
    n_test = max(1, round(fraction * len(all_groups)))
    if len(all_groups) - n_test < 2 or n_test > len(groups):
        raise DataError(f"data.test_fraction={fraction} keeps {n_test} of {len(all_groups)} scene(s) for testing and "
                        "leaves fewer than 2 for training and validation; lower it or add scenes")
    order = np.random.default_rng([seed, 1]).permutation(len(groups))
    test = {groups[i] for i in order[:n_test]}
    return [p for p in pairs if p.group not in test], [p for p in pairs if p.group in test]


def only_groups(pairs: Sequence[Pair], groups: Sequence[str], role: str = "selected") -> list[Pair]:
    """The pairs of the named scenes; a name that is not a scene of ``pairs`` is an error (a typo
    must not silently train on nothing, or on a validation scene)."""
    have = groups_of(pairs)
    unknown = sorted(set(groups) - set(have))
    if unknown:
        raise DataError(f"{role} scene(s) {unknown} not found among {have}")
    return [p for p in pairs if p.group in set(groups)]


def label_budget(pairs: Sequence[Pair], budget: int | float | None, seed: int = 0) -> list[Pair]:
    """Keep the pairs of ``budget`` scenes: an int counts scenes, a float in (0, 1] is a fraction.

    The scenes kept are a seeded choice, nested for growing budgets with the same seed (the
    2-scene set contains the 1-scene set), so label-efficiency curves compare like with like.
    """
    groups = groups_of(pairs)
    if budget is None:
        return list(pairs)
    if isinstance(budget, float) and not isinstance(budget, bool):
        if not 0 < budget <= 1:
            raise DataError(f"label budget fraction {budget} outside (0, 1]")
        k = max(1, round(budget * len(groups)))
    else:
        k = int(budget)
    if not 1 <= k <= len(groups):
        raise DataError(f"label budget of {k} scene(s) but only {len(groups)} available: {groups}")
    order = np.random.default_rng(seed).permutation(len(groups))
    keep = {groups[i] for i in order[:k]}
    return [p for p in pairs if p.group in keep]


def first_per_group(pairs: Sequence[Pair], n: int) -> list[Pair]:
    """The first ``n`` tiles (by id) of every scene; ``n <= 0`` keeps all."""
    if n <= 0:
        return list(pairs)
    kept: dict[str, int] = {}
    out = []
    for p in sorted(pairs, key=lambda q: q.id):
        if kept.get(p.group, 0) < n:
            kept[p.group] = kept.get(p.group, 0) + 1
            out.append(p)
    return out


# -- augmentation ------------------------------------------------------------------------------
def _pad_crop(a: np.ndarray, crop: int, value: float) -> np.ndarray:
    """A crop cut from a tile smaller than ``crop``, padded at the bottom and right to ``crop``²:
    the same pixels as cutting it from the padded tile, without copying the whole tile first."""
    ph, pw = crop - a.shape[-2], crop - a.shape[-1]
    if not (ph or pw):
        return a
    return np.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, ph), (0, pw)], constant_values=value)


def random_crop_d4(rng: np.random.Generator, arrays: Sequence[np.ndarray], crop: int | None,
                   augment: bool, pad_values: Sequence[float], geometry: list | None = None) -> list[np.ndarray]:
    """:func:`crop_views_d4` copied to contiguous arrays."""
    return [np.ascontiguousarray(a) for a in crop_views_d4(rng, arrays, crop, augment, pad_values, geometry)]


def crop_views_d4(rng: np.random.Generator, arrays: Sequence[np.ndarray], crop: int | None,
                  augment: bool, pad_values: Sequence[float], geometry: list | None = None) -> list[np.ndarray]:
    """Crop all ``arrays`` (``(..., H, W)``) at one random offset and apply one dihedral transform,
    as strided views where the tile covers the crop (no copy: the caller writes them where they go).

    Tiles smaller than ``crop`` are padded (with ``pad_values``: the mask's ignore index, so the
    padding counts in no loss or metric).  ``geometry``, when given, receives what
    :func:`padding_masks` needs to find the padded pixels again (rows and columns of the tile
    inside the crop before the transform, quarter turns, flip).
    """
    h, w = arrays[0].shape[-2:]
    out = list(arrays)
    k = flip = 0
    if crop is None:
        rows, cols = h, w
    else:
        y = int(rng.integers(0, max(h, crop) - crop + 1))
        x = int(rng.integers(0, max(w, crop) - crop + 1))
        out = [_pad_crop(a[..., y:y + crop, x:x + crop], crop, v) for a, v in zip(out, pad_values)]
        rows, cols = min(crop, h - y), min(crop, w - x)
    if augment:
        k = int(rng.integers(4))
        flip = bool(rng.integers(2))
        out = [np.rot90(a, k, axes=(-2, -1)) for a in out]
        if flip:
            out = [a[..., ::-1] for a in out]
    if geometry is not None:
        geometry.extend([rows, cols, k, int(flip)])
    return out


def batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised batch tensor, in shared memory inside a DataLoader worker, where the
    collation would have put it: the main process then maps it without a copy."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(int(np.prod(shape)))
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


class WholeBatch(list):
    """The items of a batch built whole (``__getitems__``): a list of per-item views, which any
    collation can stack, carrying the batch itself (``whole``) for :func:`collate_batch` to pass on
    without that copy."""

    def __init__(self, whole: dict):
        n = len(whole["id"])
        super().__init__({k: v[j] for k, v in whole.items()} for j in range(n))
        self.whole = whole


def collate_batch(data: list):
    """The training loaders' collation: a :class:`WholeBatch` as built, a batch written into a
    :class:`~.batch_pool.BatchPool` as its slot's number, anything else collated."""
    if isinstance(data, PooledBatch):
        return data
    return data.whole if isinstance(data, WholeBatch) else default_collate(data)


def padding_masks(geometry: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, size, size)`` bool, True on the pixels of each crop that came from its tile and False on
    its padding, from ``geometry`` (``(B, 4)``: tile rows R and columns C in the crop, quarter turns
    k, flip, as :func:`random_crop_d4` records them).  Before the transform the tile's pixels are
    the top-left R x C rectangle; turns and flips keep it a rectangle against one corner (np.rot90:
    k = 1 moves it to the bottom left, 2 bottom right, 3 top right, and swaps R and C for odd k), so
    each mask is a product of a row and a column test.  Computed where ``geometry`` is, with no
    copy to the host."""
    rows, cols, k, flip = (geometry[:, j, None] for j in range(4))
    odd = k % 2 == 1
    height, width = torch.where(odd, cols, rows), torch.where(odd, rows, cols)
    bottom = (k == 1) | (k == 2)
    right = ((k == 2) | (k == 3)) ^ (flip == 1)
    i = torch.arange(size, device=geometry.device, dtype=geometry.dtype)[None]
    row_ok = torch.where(bottom, i >= size - height, i < height)
    col_ok = torch.where(right, i >= size - width, i < width)
    return row_ok[:, :, None] & col_ok[:, None, :]


def aligned_crop_d4(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, streams: Sequence[torch.Tensor],
                    strides: Sequence[int], crop: int, augment: bool, ignore_index: int,
                    geometry: list | None = None, cast: bool = True
                    ) -> tuple[np.ndarray, np.ndarray, list[torch.Tensor]]:
    """:func:`random_crop_d4` for a tile whose DDPM features were computed once (the feature cache).

    The crop offset is a multiple of the coarsest feature stride, so each feature map is cropped
    at exactly the pixels under the image crop; the same dihedral transform then turns image,
    mask and features alike.  ``cast=False`` keeps the features in their stored dtype (float16):
    half the bytes for a loader's workers to hand over; the cast to float32 is exact wherever it
    happens.
    """
    align = max(strides)
    if crop % align:
        raise DataError(f"crop size {crop} must be a multiple of the coarsest feature stride {align}")
    h, w = image.shape[-2:]
    y = align * int(rng.integers(0, (max(h, crop) - crop) // align + 1))
    x = align * int(rng.integers(0, (max(w, crop) - crop) // align + 1))
    image = _pad_crop(image[:, y:y + crop, x:x + crop], crop, 0)
    mask = _pad_crop(mask[y:y + crop, x:x + crop], crop, ignore_index)
    rows, cols = min(crop, h - y), min(crop, w - x)
    feats = []
    for f, s in zip(streams, strides):
        fc = f[:, y // s:(y + crop) // s, x // s:(x + crop) // s]
        fc = fc.float() if cast else fc
        fh, fw = crop // s - fc.shape[-2], crop // s - fc.shape[-1]
        feats.append(torch.nn.functional.pad(fc, (0, fw, 0, fh)) if fh or fw else fc)
    k = flip = 0
    if augment:
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        image, mask = np.rot90(image, k, axes=(-2, -1)), np.rot90(mask, k, axes=(-2, -1))
        feats = [torch.rot90(f, k, dims=(-2, -1)) for f in feats]
        if flip:
            image, mask, feats = image[..., ::-1], mask[..., ::-1], [f.flip(-1) for f in feats]
    if geometry is not None:
        geometry.extend([rows, cols, k, int(flip)])
    return np.ascontiguousarray(image), np.ascontiguousarray(mask), [f.contiguous() for f in feats]


class _Seeded(Dataset):
    """Shared epoch/seed plumbing: each item's randomness depends on (seed, epoch, index) only.

    An index may be a *global sample number* ``epoch · len(self) + index`` (what the training
    loaders ask for, so one loader runs through many epochs without a shared epoch counter); it is
    counted from :meth:`set_epoch`'s epoch."""

    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _locate(self, index: int) -> tuple[int, int]:
        """``(epoch, index within the epoch)`` of a (global) sample number."""
        extra, local = divmod(int(index), len(self))
        return self.epoch + extra, local

    def _rng(self, epoch: int, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, index])


def _check_not_nodata(image: np.ndarray, nodata: float | None, path: Path) -> None:
    if nodata is not None and np.all(image == nodata):
        raise DataError(f"{path}: every pixel is nodata ({nodata}); nothing to learn from")
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).any():
        raise DataError(f"{path}: every pixel is NaN/inf")


def compact_images_for(device: torch.device) -> bool:
    """Whether training loaders should hand out 8-bit crops (:class:`LabelledTiles`'s
    ``compact_images``) for ``device``: off the CPU, where a batch is pinned and copied to the
    device and normalising it there is nearly free.  On the CPU the workers normalise in parallel
    and the main process would do it alone: 80-230 ms for 16 crops of 512² on this kit's 2-core
    machine, to save about 27 ms of the workers' collation (BENCHMARKS.md, issue 15)."""
    return device.type != "cpu"


class _Normalised:
    """``images[i]`` of a compact dataset: the stored 8-bit tile normalised when asked for (the
    whole-tile paths: feature cache, validation), so the float32 copies are not all kept."""

    def __init__(self, raw: list[np.ndarray], stats: BandStats, names: list[str]):
        self.raw, self.stats, self.names = raw, stats, names

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.stats.normalise(self.raw[i], self.names[i])


class LabelledTiles(_Seeded):
    """Labelled tiles in memory, as normalised image / class-index mask pairs.

    ``crop_size=None`` returns whole tiles (evaluation); otherwise random crops, ``samples_per_epoch``
    of them per epoch (default: one per tile).  Items are dicts ``image`` (float32 ``(C, h, w)``
    in ``[-1, 1]``), ``mask`` (int64 ``(h, w)``), ``id``.

    ``compact_images=True`` (training loaders) keeps 8-bit tiles as stored and hands out their
    8-bit crops, a quarter of the float32 bytes that workers copy to the main process (a batch of
    16 crops of 512² is 12.6 MB instead of 50 MB); :meth:`finish` then normalises the batch on its
    device, with the padding and photometric jitter the worker drew, to the same float32 values.
    Tiles stored with more than 8 bits are normalised in the workers as before.
    """

    def __init__(self, pairs: Sequence[Pair], scheme: str | LabelScheme, stats: BandStats | None = None,
                 crop_size: int | None = None, augment: bool = False, samples_per_epoch: int | None = None,
                 seed: int = 0, expected_bands: int | None = None, compact_masks: bool = False,
                 photometric: float = 0.0, compact_images: bool = False,
                 masks: Sequence[np.ndarray | None] | None = None, unlabelled: bool = False):
        """``masks``: class-index masks in memory, one per pair (``None``: read the pair's file), e.g.
        a teacher's pseudo-labels (``training.pseudo``).  ``unlabelled=True``: a pair without a
        mask file gets an all-ignore mask, for predicting on tiles whose labels must not be read."""
        if not pairs:
            raise DataError("no labelled tiles given")
        # Training loaders ask for uint8 masks (the ignore index 255 fits): an eighth of the bytes
        # that workers hand to the main process and copy to the device; the loss casts them.
        self.mask_dtype = torch.uint8 if compact_masks else torch.int64
        self.scheme = get_scheme(scheme)
        self.pairs = list(pairs)
        self.crop_size, self.augment, self.seed = crop_size, augment, seed
        self.photometric = photometric
        self.samples_per_epoch = samples_per_epoch
        raw, self.masks = [], []
        bands = expected_bands or (stats.bands if stats else None)
        if masks is not None and len(masks) != len(self.pairs):
            raise DataError(f"{len(masks)} mask(s) given for {len(self.pairs)} tile(s)")
        for i, p in enumerate(self.pairs):
            given = None if masks is None else masks[i]
            if given is None and p.mask is None and not unlabelled:
                raise DataError(f"{p.image}: no mask")
            tile = read_tile(p.image, expected_bands=bands)
            bands = tile.bands
            _check_not_nodata(tile.image, tile.nodata, p.image)
            if given is not None:
                mask = np.asarray(given)
            elif p.mask is None:
                mask = np.full(tile.shape, self.scheme.ignore_index, dtype=np.uint8)
            else:
                mask = read_mask(p.mask, self.scheme)
            if mask.shape != tile.shape:
                raise DataError(f"{p.image}: image is {tile.shape[1]}x{tile.shape[0]} (WxH) but its mask "
                                f"{p.mask if given is None else '(given in memory)'} is {mask.shape[1]}x{mask.shape[0]}")
            raw.append(tile.image)
            self.masks.append(mask.astype(np.uint8))
        self.stats = stats or band_stats_of((str(p.image), im) for p, im in zip(self.pairs, raw))
        names = [str(p.image) for p in self.pairs]
        self.compact = compact_images and crop_size is not None and all(im.dtype == np.uint8 for im in raw)
        if self.compact:
            for im, name in zip(raw, names):
                if im.shape[0] != self.stats.bands:
                    raise DataError(f"{name}: has {im.shape[0]} band(s), the normalisation statistics have "
                                    f"{self.stats.bands}")
            self.images = _Normalised(raw, self.stats, names)
            self._band_range: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        else:
            self.images = [self.stats.normalise(im, name) for im, name in zip(raw, names)]
        self.features: list[list[torch.Tensor]] | None = None
        self.strides: list[int] = []

    def attach_features(self, features: list[list[torch.Tensor]], strides: Sequence[int]) -> None:
        """Use precomputed whole-tile DDPM features (one list of streams per tile): items then carry
        ``streams``, cropped and transformed with the image (see :func:`aligned_crop_d4`)."""
        if len(features) != len(self.pairs):
            raise DataError(f"features for {len(features)} tile(s) but the dataset has {len(self.pairs)}")
        self.features, self.strides = features, list(strides)

    def __len__(self) -> int:
        return self.samples_per_epoch or len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        i, rng = self._tile_and_rng(index)
        if self.compact:
            return self._compact_item(rng, i)
        if self.features is not None and self.crop_size is not None:
            image, mask, streams = aligned_crop_d4(rng, self.images[i], self.masks[i], self.features[i],
                                                   self.strides, self.crop_size, self.augment, self.scheme.ignore_index)
            return {"image": torch.from_numpy(self._jitter(rng, image)), "mask": torch.from_numpy(mask).to(self.mask_dtype),
                    "streams": streams, "id": self.pairs[i].id}
        image, mask = random_crop_d4(rng, [self.images[i], self.masks[i]], self.crop_size,
                                     self.augment, pad_values=[0.0, self.scheme.ignore_index])
        return {"image": torch.from_numpy(self._jitter(rng, image)), "mask": torch.from_numpy(mask).to(self.mask_dtype),
                "id": self.pairs[i].id}

    def _tile_and_rng(self, index: int) -> tuple[int, np.random.Generator]:
        """The tile a (global) sample number crops and the generator of its draws."""
        epoch, index = self._locate(index)
        return index % len(self.pairs), self._rng(epoch, index)

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        """A whole batch (what the DataLoader's workers ask for): crops written straight into one
        batch tensor, in shared memory inside a worker, instead of a copy per crop that the
        collation copies again (:func:`collate_batch`; another collation stacks the items as usual).
        The same values as the items of :meth:`__getitem__`; other layouts (compact, cached
        features, whole tiles) go item by item."""
        shapes = self.batch_shapes(len(indices))
        if shapes is None:
            return [self[i] for i in indices]
        bands, crop = self.images[0].shape[0], self.crop_size
        pooled = worker_slot(indices)
        buffers = pooled[0] if pooled else {k: batch_tensor(*v) for k, v in shapes.items()}
        image, mask = buffers["image"], buffers["mask"]
        ids = []
        for j, index in enumerate(indices):
            i, rng = self._tile_and_rng(index)
            im, m = crop_views_d4(rng, [self.images[i], self.masks[i]], crop, self.augment,
                                  pad_values=[0.0, self.scheme.ignore_index])
            out = image[j].numpy()
            if self.augment and self.photometric > 0:
                gain, offset = self._jitter_draw(rng, bands)
                np.multiply(im, gain, out=out)
                out += offset
            else:
                np.copyto(out, im)
            np.copyto(mask[j].numpy(), m)
            ids.append(self.pairs[i].id)
        if pooled is not None:
            return PooledBatch(pool=pooled[1], slot=pooled[2], id=ids)
        return WholeBatch({"image": image, "mask": mask, "id": ids})

    def batch_shapes(self, batch_size: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]] | None:
        """The tensors of a batch that :meth:`__getitems__` builds whole (float crops without cached
        features), for a :class:`~.batch_pool.BatchPool`; ``None`` for the layouts built item by item."""
        if self.compact or self.features is not None or self.crop_size is None:
            return None
        bands, crop = self.images[0].shape[0], self.crop_size
        return {"image": ((batch_size, bands, crop, crop), torch.float32),
                "mask": ((batch_size, crop, crop), self.mask_dtype)}

    def _compact_item(self, rng: np.random.Generator, i: int) -> dict:
        """The 8-bit crop with what :meth:`finish` needs: where the padding is (``geometry``) and
        the jitter drawn for it (``jitter``: gain and offset per band), from the same generator in
        the same order as the float path, so both give one image."""
        geometry: list[int] = []
        raw = self.images.raw[i]
        if self.features is not None:
            image, mask, streams = aligned_crop_d4(rng, raw, self.masks[i], self.features[i], self.strides,
                                                   self.crop_size, self.augment, self.scheme.ignore_index,
                                                   geometry=geometry, cast=False)
        else:
            image, mask = random_crop_d4(rng, [raw, self.masks[i]], self.crop_size, self.augment,
                                         pad_values=[0, self.scheme.ignore_index], geometry=geometry)
        item = {"image": torch.from_numpy(image), "mask": torch.from_numpy(mask).to(self.mask_dtype),
                "geometry": torch.tensor(geometry, dtype=torch.int32), "id": self.pairs[i].id}
        if self.features is not None:
            item["streams"] = streams
        if self.augment and self.photometric > 0:
            gain, offset = self._jitter_draw(rng, image.shape[0])
            item["jitter"] = torch.from_numpy(np.stack([gain, offset]))
        return item

    def finish(self, batch: dict) -> dict:
        """A batch from a compact dataset made what the float path gives, on the batch's device:
        8-bit pixels normalised as :meth:`BandStats.normalise` does (same float32 operations),
        padding set to 0, photometric jitter applied, cached features cast to float32.  Other
        batches pass unchanged, except one written into a shared batch pool, read from its slot."""
        if not self.compact:
            return resolve(batch)
        pixels = batch["image"]
        if pixels.device not in self._band_range:  # once per device: no host-to-device copy per step
            low = torch.tensor(self.stats.low, dtype=torch.float32)[:, None, None]
            high = torch.tensor(self.stats.high, dtype=torch.float32)[:, None, None]
            self._band_range[pixels.device] = (low.to(pixels.device), torch.clamp_min(high - low, 1e-6).to(pixels.device))
        low, span = self._band_range[pixels.device]
        x = pixels.float()  # then in place: each new tensor of the batch's size costs its page faults
        x.sub_(low).div_(span).mul_(2.0).sub_(1.0).clamp_(-1.0, 1.0)
        size, geometry = x.shape[-1], batch.pop("geometry")
        if geometry.device.type != "cpu":  # one pass for the batch: a per-crop test would be a sync
            x.masked_fill_(~padding_masks(geometry, size)[:, None], 0.0)
        else:  # on the host only the padded crops (most have none) cost a pass
            for i in torch.nonzero((geometry[:, :2] < size).any(1)).flatten().tolist():
                x[i].masked_fill_(~padding_masks(geometry[i:i + 1], size), 0.0)
        jitter = batch.pop("jitter", None)
        if jitter is not None:
            x.mul_(jitter[:, 0]).add_(jitter[:, 1])
        out = {**batch, "image": x}
        if "streams" in batch:
            out["streams"] = [f.float() for f in batch["streams"]]
        return out

    def _jitter(self, rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
        """Photometric augmentation of the image only: per band, ``a * x + b`` with gain ``a`` in
        ``[1 - s, 1 + s]`` and offset ``b`` in ``[-s, s]`` (images are in [-1, 1]), ``s = photometric``.

        Scenes of one dataset differ in illumination, season and sensor gain; a network trained on one
        scene's colours reads another's wrongly.  Cached DDPM features are not jittered: they were
        computed from the real image.  Drawn after the crop from the same generator, so crops and
        flips are those of an unjittered run."""
        if not (self.augment and self.photometric > 0):
            return image
        a, b = self._jitter_draw(rng, image.shape[0])
        return image * a + b

    def _jitter_draw(self, rng: np.random.Generator, c: int) -> tuple[np.ndarray, np.ndarray]:
        a = rng.uniform(1 - self.photometric, 1 + self.photometric, size=(c, 1, 1)).astype(np.float32)
        b = rng.uniform(-self.photometric, self.photometric, size=(c, 1, 1)).astype(np.float32)
        return a, b

    def class_pixel_counts(self) -> np.ndarray:
        counts = np.zeros(self.scheme.num_classes, np.int64)
        for m in self.masks:
            counts += np.bincount(m[m != self.scheme.ignore_index].ravel(), minlength=self.scheme.num_classes)
        return counts


class UnlabelledPool(_Seeded):
    """Any folder (or list) of tiles, as random normalised crops for DDPM pretraining.

    Each epoch draws ``samples_per_epoch`` crops (default: one per tile) spread over the tiles in
    turn, so that small pools still give full batches.  Tiles smaller than the crop are reflected
    to size rather than padded with a constant, which a DDPM would learn as content.
    """

    def __init__(self, tiles: str | os.PathLike | Sequence[str | os.PathLike], crop_size: int = 64,
                 stats: BandStats | None = None, augment: bool = True, samples_per_epoch: int | None = None,
                 seed: int = 0, expected_bands: int | None = None):
        paths = list_tiles(tiles) if isinstance(tiles, (str, os.PathLike)) else [Path(t) for t in tiles]
        if not paths:
            raise DataError("unlabelled pool is empty")
        self.paths = paths
        self.crop_size, self.augment, self.seed = crop_size, augment, seed
        self.samples_per_epoch = samples_per_epoch
        raw = []
        bands = expected_bands or (stats.bands if stats else None)
        for p in paths:
            tile = read_tile(p, expected_bands=bands)
            bands = tile.bands
            _check_not_nodata(tile.image, tile.nodata, p)
            raw.append(tile.image)
        self.stats = stats or band_stats_of((str(p), im) for p, im in zip(paths, raw))
        self.images = []
        for p, im in zip(paths, raw):
            img = self.stats.normalise(im, str(p))
            ph, pw = max(0, crop_size - img.shape[1]), max(0, crop_size - img.shape[2])
            if ph or pw:
                if ph >= img.shape[1] or pw >= img.shape[2]:
                    img = np.pad(img, ((0, 0), (0, ph), (0, pw)), mode="symmetric")
                else:
                    img = np.pad(img, ((0, 0), (0, ph), (0, pw)), mode="reflect")
            self.images.append(img)

    def __len__(self) -> int:
        return self.samples_per_epoch or len(self.paths)

    def __getitem__(self, index: int) -> dict:
        epoch, index = self._locate(index)
        i = index % len(self.paths)
        (image,) = random_crop_d4(self._rng(epoch, index), [self.images[i]], self.crop_size, self.augment, [0.0])
        return {"image": torch.from_numpy(image), "id": self.paths[i].stem}

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        """A whole batch, each crop written once into the batch tensor (a slot of the loader's
        :class:`~.batch_pool.BatchPool` where it has one): the values of :meth:`__getitem__`."""
        pooled = worker_slot(indices)
        image = pooled[0]["image"] if pooled else batch_tensor(*self.batch_shapes(len(indices))["image"])
        ids = []
        for j, index in enumerate(indices):
            epoch, local = self._locate(index)
            i = local % len(self.paths)
            (view,) = crop_views_d4(self._rng(epoch, local), [self.images[i]], self.crop_size, self.augment, [0.0])
            np.copyto(image[j].numpy(), view)
            ids.append(self.paths[i].stem)
        if pooled is not None:
            return PooledBatch(pool=pooled[1], slot=pooled[2], id=ids)
        return WholeBatch({"image": image, "id": ids})

    def batch_shapes(self, batch_size: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """The batch :meth:`__getitems__` builds, for a :class:`~.batch_pool.BatchPool`."""
        return {"image": ((batch_size, self.images[0].shape[0], self.crop_size, self.crop_size), torch.float32)}
