"""DDPM features for a whole archive, sharded across processes (``accelerate launch``).

Feature extraction is embarrassingly parallel: under ``accelerate launch`` each process takes a
disjoint, contiguous slice of the sorted tile list (``Accelerator.split_between_processes``) and
writes one safetensors file per tile into the feature cache, so no two processes ever write the
same file and a killed run redoes only the tiles it had not finished.  The main process then
writes ``manifest.json`` listing which process wrote which tile.  Fine-tuning with
``features.cache=true`` and the same ``features.cache_dir`` reads these files instead of running
the DDPM again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from ..config import FeatureConfig, embedded_ddpm_dir
from ..data.io import list_tiles, read_tile
from ..fileio import atomic_write_json, check_writable
from ..ddpm.unet import load_bundle
from .extractor import FeatureExtractor
from .tile_cache import tile_cache_path, tile_features


def archive_items(data: Path) -> list[tuple[str, Path]]:
    """``(id, path)`` of every tile under ``data/images`` (or ``data``); ids match fine-tuning's."""
    root = data / "images" if (data / "images").is_dir() else data
    return [(f.relative_to(root).with_suffix("").as_posix(), f) for f in list_tiles(root)]


def extract_archive(data: str | os.PathLike, cache_dir: str | os.PathLike, features: FeatureConfig,
                    progress: bool = True) -> dict[str, Any]:
    """Fill ``cache_dir`` with the whole-tile features of every tile of ``data``; return the manifest."""
    cache = check_writable(cache_dir)
    accelerator = Accelerator()
    if accelerator.is_main_process:
        print(f"[features] {accelerator.num_processes} process(es) on {accelerator.device.type}")
    bundle = load_bundle(Path(features.checkpoint) if features.checkpoint else embedded_ddpm_dir(), accelerator.device)
    fx = FeatureExtractor.from_bundle(bundle, features.timesteps, features.blocks, noise_seed=features.noise_seed,
                                      cache_dir=cache)
    items = archive_items(Path(data))

    def load(mine):
        for image_id, path in mine:
            tile = read_tile(path, expected_bands=bundle.bands)
            yield image_id, torch.from_numpy(bundle.stats.normalise(tile.image, str(path))).to(accelerator.device)

    with accelerator.split_between_processes(items) as mine:
        tile_features(fx, load(mine), window=features.cache_window, progress=progress and accelerator.is_main_process,
                      keep=False, dtype=features.cache_dtype)
        done = [(accelerator.process_index, image_id) for image_id, _ in mine]
    written = gather_object(done)
    folder = tile_cache_path(fx, "x", features.cache_window, features.cache_dtype).parent
    manifest = {"data": str(data), "tiles": len(items), "processes": accelerator.num_processes,
                "cache": str(folder), "timesteps": list(fx.timesteps), "blocks": list(fx.blocks),
                "window": features.cache_window, "written_by": {i: r for r, i in written}}
    if accelerator.is_main_process:
        atomic_write_json(folder / "manifest.json", manifest)
    accelerator.wait_for_everyone()
    return manifest
