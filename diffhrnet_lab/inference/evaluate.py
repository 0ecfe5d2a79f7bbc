"""Scoring a segmenter on whole tiles: validation during fine-tuning, and ``diffhrnet-lab evaluate``.

Both walk the tiles the same way (:func:`predict_tile`): a tile is scored in overlapping windows
blended together (``inference.sliding``), so peak memory depends on the window and the model,
not on the tile, and a 10,000-pixel orthophoto scores like a 256-pixel crop.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..data.datasets import LabelledTiles, find_pairs
from ..data.io import BandStats, list_tiles, read_mask, read_tile
from ..data.labels import get_scheme
from ..errors import DataError
from ..fileio import atomic_write_json, check_writable
from ..models.segmenters import load_segmenter
from .adapt import adapted_batchnorm
from .metrics import confusion_matrix, scores
from .sliding import predict_sliding, write_prediction


@torch.no_grad()
def predict_tile(model: nn.Module, image: torch.Tensor, window: int, streams: Sequence[torch.Tensor] | None = None,
                 strides: Sequence[int] | None = None) -> torch.Tensor:
    """Class logits ``(K, H, W)`` of one normalised tile ``(C, H, W)`` (on the model's device).

    ``window`` > 0: overlapping windows blended together (memory bounded by the window);
    ``window`` = 0: the whole tile in one forward pass (only for tiles known to be small).
    ``streams``: the tile's cached DDPM features, windowed with the image."""
    if window == 0:
        feats = None if streams is None else [f[None].to(image.device) for f in streams]
        return model(image[None], feats)[0]
    if streams is not None:
        return predict_sliding(lambda b, s: model(b, s), image, window=window, overlap=0.25,
                               streams=streams, strides=strides)
    return predict_sliding(lambda b: model(b), image, window=window, overlap=0.25)


@torch.no_grad()
def validate(model: nn.Module, ds: LabelledTiles, window: int, device, progress: bool = False,
             adapt: int = 0, adapt_crop: int = 96, adapt_batch: int = 4, adapt_within: str = "") -> tuple[torch.Tensor, list]:
    """Whole-tile predictions of a labelled dataset (:func:`predict_tile`); returns the confusion
    matrix over all its pixels and the predictions (uint8 class maps).

    ``adapt`` > 0: BatchNorm statistics re-estimated first on that many batches of unlabelled crops
    of these tiles (AdaBN, :mod:`.adapt`), for this scoring only; ``adapt_within``: only the
    layers under that submodule (``"backbone"``: HRNet's image path)."""
    if adapt > 0:
        with adapted_batchnorm(model, ds.images, ds.features, ds.strides, crop=adapt_crop,
                               batch_size=adapt_batch, batches=adapt, device=device, within=adapt_within):
            return validate(model, ds, window, device, progress)
    model.eval()
    k = ds.scheme.num_classes
    cm = torch.zeros(k, k, dtype=torch.int64)
    preds = []
    for i in tqdm(range(len(ds.pairs)), desc="validating", disable=not progress, leave=False):
        img = torch.from_numpy(ds.images[i]).to(device)
        streams = ds.features[i] if ds.features is not None else None
        pred = predict_tile(model, img, window, streams, ds.strides).argmax(0).cpu()
        cm += confusion_matrix(pred, torch.from_numpy(ds.masks[i].astype(np.int64)), k, ds.scheme.ignore_index)
        preds.append(pred.numpy().astype(np.uint8))
    return cm, preds


def scoring_inputs(checkpoint: str | os.PathLike, pairs: Sequence, features=None,
                   scoring: dict[str, Any] | None = None, unlabelled: bool = False) -> tuple[nn.Module, dict, LabelledTiles]:
    """What :func:`score_checkpoint` scores: the saved segmenter (with ``scoring`` settings), its
    metadata and the labelled tiles normalised with its statistics, carrying their whole-tile DDPM
    features from the cache when ``features`` caches them.  ``unlabelled``: pairs without masks
    are allowed (all-ignore masks), for predicting only (``training.pseudo``)."""
    from ..features.tile_cache import tile_features

    model, meta = load_segmenter(checkpoint, getattr(features, "checkpoint", "") or None, scoring=scoring)
    ds = LabelledTiles(list(pairs), get_scheme(meta["scheme"]), stats=BandStats.from_dict(meta["stats"]),
                       unlabelled=unlabelled)
    fx = getattr(model, "extractor", None)
    if fx is not None and features is not None and features.cache:
        fx.cache_dir = Path(features.cache_dir)
        items = [(p.id, torch.from_numpy(im)) for p, im in zip(ds.pairs, ds.images)]
        ds.attach_features(tile_features(fx, items, window=features.cache_window, progress=False,
                                         dtype=features.cache_dtype), [fx.info[b]["stride"] for _, b in fx.keys])
    return model, meta, ds


def score_checkpoint(checkpoint: str | os.PathLike, pairs: Sequence, features=None, window: int | None = None,
                     device: str = "cpu", adapt: int | Sequence[int] = 0, adapt_within: str = "",
                     scoring: dict[str, Any] | None = None) -> tuple[torch.Tensor, list, Any]:
    """A saved segmenter scored once on whole labelled tiles (``pairs``): the confusion matrix, the
    predictions and the :class:`~diffhrnet_lab.inference.metrics.Scores`.

    ``features`` (the run's :class:`~diffhrnet_lab.config.FeatureConfig`) names the DDPM bundle;
    when it caches features, DDPM methods read whole-tile features from that cache, the way
    training and the choice of its best step did, so the score measures the model and not a change
    of feature path.  Used wherever a step picked on one scene is reported on another (the demo,
    notebook 03, the sweeps).  ``adapt``: see :func:`validate`; a list scores the checkpoint once
    per value and returns a list of results.  ``scoring``: scoring-only model settings used instead
    of the checkpoint's (:func:`~diffhrnet_lab.models.segmenters.load_segmenter`)."""
    model, meta, ds = scoring_inputs(checkpoint, pairs, features, scoring)
    scheme = ds.scheme
    window = window or int(meta.get("eval_window") or 128)
    results = []
    for a in ([adapt] if isinstance(adapt, int) else adapt):
        cm, preds = validate(model, ds, window, torch.device(device), adapt=a, adapt_within=adapt_within)
        results.append((cm, preds, scores(cm, list(scheme.classes))))
    return results[0] if isinstance(adapt, int) else results


def evaluate(checkpoint: str | os.PathLike, data: str | os.PathLike, out_dir: str | os.PathLike,
             window: int | None = None, ddpm_path: str | os.PathLike | None = None, progress: bool = True) -> dict[str, Any]:
    """Predict every tile of ``data`` (``images/`` [+ ``masks/``], or a plain folder of tiles).

    Writes ``pred/<id>.tif`` (georeferenced like the input) and ``pred/<id>.png`` (colours); with
    masks, also ``metrics.json`` (per-class IoU and F1, mIoU, OA over all tiles).
    """
    out = check_writable(out_dir)
    model, meta = load_segmenter(checkpoint, ddpm_path)
    scheme = get_scheme(meta["scheme"])
    stats = BandStats.from_dict(meta["stats"])
    data = Path(data)
    if (data / "images").is_dir():
        pairs = find_pairs(data, require_masks=False)
        items = [(p.image, p.mask, p.id) for p in pairs]
    elif (data / "labelled" / "images").is_dir():  # the embedded samples' root
        items = [(p.image, p.mask, p.id) for p in find_pairs(data / "labelled", require_masks=False)]
    else:
        items = [(f, None, f.relative_to(data).with_suffix("").as_posix()) for f in list_tiles(data)]
    window = window or int(meta.get("eval_window") or 128)
    k = scheme.num_classes
    cm = torch.zeros(k, k, dtype=torch.int64)
    n_labelled = 0
    for image, mask, tid in tqdm(items, desc="evaluating", disable=not progress):
        tile = read_tile(image, expected_bands=meta["bands"])
        x = torch.from_numpy(stats.normalise(tile.image, str(image)))
        pred = predict_tile(model, x, window).argmax(0)
        write_prediction(pred.numpy(), scheme, tile, out / "pred" / f"{tid}.tif", out / "pred" / f"{tid}.png")
        if mask is not None:
            truth = torch.from_numpy(read_mask(mask, scheme))
            if truth.shape != pred.shape:
                raise DataError(f"{image}: image is {tuple(pred.shape)} but its mask {mask} is {tuple(truth.shape)}")
            cm += confusion_matrix(pred, truth, k, scheme.ignore_index)
            n_labelled += 1
    result: dict[str, Any] = {"checkpoint": str(checkpoint), "data": str(data), "tiles": len(items),
                              "labelled_tiles": n_labelled, "predictions": str(out / "pred")}
    if n_labelled:
        result.update(scores(cm, list(scheme.classes)).as_dict())
        result["confusion"] = cm.tolist()
        atomic_write_json(out / "metrics.json", result)
    return result
