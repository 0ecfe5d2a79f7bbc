"""Whole-tile DDPM features, computed once per tile and kept: the feature cache.

Fine-tuning crops the same tiles again and again; running the frozen DDPM on every crop makes a
Diff-HRNet step several times an HRNet step.  Instead each tile's features are computed once, in
overlapping windows blended like sliding-window inference (``data.tiling``), and every training
crop takes the matching window of them (``data.datasets.aligned_crop_d4``).

Speed: the windows run on the extractor's device, batched to a memory budget; the blend weights
are made once per block and the accumulators live on that device, so a tile crosses to the host
once, as float16, instead of once per window and feature key.

Size (:func:`cache_bytes_per_pixel`): with ``|T|`` timesteps and blocks of ``C_b`` channels at
stride ``s_b``, a tile costs ``Σ_b |T|·C_b / s_b²`` values per pixel: float16 by default, or
``uint8`` (per-channel affine quantisation, half the bytes) with ``features.cache_dtype=uint8``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import torch

from ..data.tiling import blend_weights, window_starts
from ..errors import ConfigError
from ..fileio import atomic_save_tensors, load_tensors
from .extractor import FeatureExtractor, FeatureKey

CACHE_DTYPES = ("float16", "uint8")


def _device_of(fx: FeatureExtractor) -> torch.device:
    return next(fx.unet.parameters()).device


def activation_bytes_per_window(fx: FeatureExtractor, wy: int, wx: int) -> int:
    """A generous bound on the U-Net's live activations for one window (all timesteps): float32,
    one tensor per channel width of every level, a few of them alive at once (ResNet blocks keep
    their input, the skip and two intermediates)."""
    chans = sum(fx.unet.config.block_out_channels)
    return 4 * 4 * len(fx.timesteps) * wy * wx * chans


def windows_per_batch(fx: FeatureExtractor, wy: int, wx: int, budget_mb: int = 0) -> int:
    """How many windows one forward may take: ``budget_mb`` of activations, or when 0, a quarter of
    the free GPU memory (CUDA) or 512 MB (CPU, where bigger batches stop paying off)."""
    dev = _device_of(fx)
    if budget_mb > 0:
        budget = budget_mb * 2**20
    elif dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        # memory PyTorch holds in its cache but does not use is free to us too
        budget = (free + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)) // 4
    else:
        budget = 512 * 2**20
    return max(1, min(256, budget // activation_bytes_per_window(fx, wy, wx)))


@torch.inference_mode()
def compute_tiled(fx: FeatureExtractor, image: torch.Tensor, window: int = 128, overlap: float = 0.25,
                  batch_size: int = 0, budget_mb: int = 0, out_dtype: torch.dtype = torch.float32,
                  out_device: str | torch.device | None = None, bf16: bool = False) -> dict[FeatureKey, torch.Tensor]:
    """Features of one whole tile ``(C, H, W)``, computed in overlapping windows and blended.

    Windows start on multiples of the U-Net stride, so every window's feature grid lies on the
    tile's; the DDPM sees windows of the size it was trained near and its attention stays small.
    Returns ``{(t, b): (C_b, ceil(H/s_b), ceil(W/s_b))}`` in ``out_dtype`` on ``out_device`` (default:
    float32 on the extractor's device); each key's float32 accumulator is freed as soon as it is
    converted, so a large tile needs its float32 features once, not twice.  ``batch_size`` 0: as
    many windows per forward as ``budget_mb`` allows (:func:`windows_per_batch`).  ``bf16``: the
    U-Net runs under bfloat16 autocast (GPUs; accumulation stays float32).
    """
    if fx.upsample:
        raise ConfigError("compute_tiled returns features at block resolution; use upsample=False")
    dev = _device_of(fx)
    s = fx.stride
    window = max(s, window - window % s)
    padded, h, w = fx._prepare(image[None].to(dev, torch.float32))
    H, W = padded.shape[-2:]
    wy, wx = min(window, H), min(window, W)  # a tile smaller than the window is one window
    step = max(s, int(round(window * (1 - overlap))) // s * s)
    boxes = [(y, x) for y in window_starts(H, wy, step) for x in window_starts(W, wx, step)]
    batch_size = batch_size or windows_per_batch(fx, wy, wx, budget_mb)
    strides = {b: fx.info[b]["stride"] for b in fx.blocks}
    weights = {b: blend_weights(wy // bs, wx // bs).to(dev) for b, bs in strides.items()}
    norm = {b: torch.zeros((H // bs, W // bs), device=dev) for b, bs in strides.items()}
    for b, bs in strides.items():
        for y, x in boxes:
            norm[b][y // bs:(y + wy) // bs, x // bs:(x + wx) // bs] += weights[b]
    acc: dict[FeatureKey, torch.Tensor] = {}
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i:i + batch_size]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            feats = fx.compute(torch.stack([padded[0, :, y:y + wy, x:x + wx] for y, x in chunk]))
        for key, f in feats.items():
            bs, wgt = strides[key[1]], weights[key[1]]
            a = acc.get(key)
            if a is None:
                a = acc[key] = torch.zeros((f.shape[1], H // bs, W // bs), device=dev)
            for (y, x), fi in zip(chunk, f):
                a[:, y // bs:(y + wy) // bs, x // bs:(x + wx) // bs] += fi.float() * wgt
    out = {}
    for key in list(acc):
        a, bs = acc.pop(key), strides[key[1]]
        a = a.div_(norm[key[1]])[:, : math.ceil(h / bs), : math.ceil(w / bs)]
        out[key] = a.to(device=out_device or dev, dtype=out_dtype)
        del a
    return out


# -- compact storage -------------------------------------------------------------------------------
def quantise(f: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-channel affine 8-bit quantisation of ``(C, h, w)``: ``q = round((f - lo) / scale)``.

    DDPM activations differ in range by orders of magnitude between channels, so one scale per
    channel keeps the error of each below half its own step (``scale / 2``)."""
    flat = f.float().flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    scale = ((hi - lo) / 255).clamp_min(1e-8)
    q = ((f.float() - lo[:, None, None]) / scale[:, None, None]).round_().clamp_(0, 255).to(torch.uint8)
    return {"q": q, "lo": lo, "scale": scale}


def dequantise(q: torch.Tensor, lo: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (q.float() * scale[:, None, None] + lo[:, None, None]).half()


def _pack(feats: dict[FeatureKey, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    if dtype == "float16":
        return {f"{t}_{b}": v.half().cpu().contiguous() for (t, b), v in feats.items()}
    out = {}
    for (t, b), v in feats.items():
        for part, x in quantise(v).items():
            out[f"{t}_{b}.{part}"] = x.cpu().contiguous()
    return out


def _unpack(stored: dict[str, torch.Tensor], keys: list[FeatureKey]) -> list[torch.Tensor] | None:
    streams = []
    for t, b in keys:
        k = f"{t}_{b}"
        if k in stored:
            streams.append(stored[k])
        elif f"{k}.q" in stored:
            streams.append(dequantise(stored[f"{k}.q"], stored[f"{k}.lo"], stored[f"{k}.scale"]))
        else:
            return None
    return streams


def cache_bytes_per_pixel(fx: FeatureExtractor, dtype: str = "float16") -> float:
    """Bytes a cached tile costs per image pixel (the per-channel ranges of ``uint8`` excluded)."""
    values = sum(fx.info[b]["channels"] / fx.info[b]["stride"] ** 2 for _, b in fx.keys)
    return values * (2 if dtype == "float16" else 1)


def tile_features(fx: FeatureExtractor, items: Iterable[tuple[str, torch.Tensor]], window: int = 128,
                  progress: bool = False, keep: bool = True, dtype: str = "float16",
                  budget_mb: int = 0, bf16: bool = False) -> list[list[torch.Tensor]]:
    """Whole-tile features (:func:`compute_tiled`) of ``(id, image)`` items, as float16 host
    streams in ``fx.keys`` order; served from and written to ``fx.cache_dir`` when set, so runs
    that share a DDPM (seeds, label budgets, fusion variants) compute them once.  With a cache,
    a tile computed now is returned as read from its file, like one found there: safetensors maps
    the file, so the streams of a scene cost page cache, which the OS can drop under pressure,
    rather than anonymous memory held for the whole run (2.4 GB for one Dubai scene on blocks
    1 and 2).  ``keep=False``
    only fills the cache (memory stays flat over an archive) and returns nothing.  ``dtype``
    ``uint8`` stores (and returns, dequantised) the 8-bit form."""
    from tqdm.auto import tqdm

    if dtype not in CACHE_DTYPES:
        raise ConfigError(f"features.cache_dtype '{dtype}': choose one of {', '.join(CACHE_DTYPES)}")
    out = []
    for image_id, image in tqdm(items, desc="DDPM tile features", disable=not progress, leave=False):
        path = tile_cache_path(fx, image_id, window, dtype) if fx.cache_dir is not None else None
        if not keep and path is not None and path.is_file():
            continue
        streams = _unpack(load_tensors(path), fx.keys) if path is not None and path.is_file() else None
        if streams is None:
            feats = compute_tiled(fx, image, window=window, budget_mb=budget_mb, bf16=bf16,
                                  out_dtype=torch.float16 if dtype == "float16" else torch.float32)
            stored = _pack(feats, dtype)
            del feats
            if path is not None:
                atomic_save_tensors(path, stored)
                del stored  # read back below: the file's pages, which the OS can drop, replace this copy
            streams = _unpack(load_tensors(path) if path is not None else stored, fx.keys)
        if keep:
            out.append(streams)
    return out


def tile_cache_path(fx: FeatureExtractor, image_id: str, window: int, dtype: str = "float16") -> Path:
    """Where :func:`tile_features` keeps a tile's features: one file per tile, so processes that
    each handle a disjoint slice of an archive never write the same file."""
    return fx._cache_path(image_id, f"tiled{window}" + ("" if dtype == "float16" else f"_{dtype}"))
