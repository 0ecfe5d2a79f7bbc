"""Benchmarks that print JSON: figures and ratios measured in one run, never asserted in tests.

``features``: the batched, early-exit extractor against the naive way (one full U-Net forward per
timestep over the same batch, with hooks, as DDPM-Seg does) on the same images, alternating the two
so that machine noise hits both alike; plus peak resident memory when streaming 1, 8 and 32 images
through the extractor, each in a fresh process (peak RSS only grows within a process).
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

from .config import embedded_ddpm_dir, profile_config, samples_dir

_SETTINGS = {  # images per batch, crop size, repeats
    "smoke": (4, 64, 3),
    "quick": (8, 128, 5),
    "full": (16, 256, 7),
}


def _images(n: int, size: int) -> torch.Tensor:
    from .data.datasets import LabelledTiles, find_pairs

    ds = LabelledTiles(find_pairs(samples_dir() / "labelled"), "samples", crop_size=size, seed=0)
    return torch.stack([ds[i]["image"] for i in range(n)])


def _extractor(profile: str):
    from .ddpm.features import FeatureExtractor
    from .ddpm.unet import build_scheduler, build_unet, load_bundle

    fc = profile_config(profile).features
    if (embedded_ddpm_dir() / "ddpm.json").exists():
        b = load_bundle(embedded_ddpm_dir())
        return FeatureExtractor.from_bundle(b, fc.timesteps, fc.blocks), "embedded tiny"
    torch.manual_seed(0)
    return FeatureExtractor(build_unet("tiny", 4, 64).eval(), build_scheduler(), fc.timesteps, fc.blocks), "untrained tiny"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def stream_peak_rss(n_images: int, size: int, batch: int = 4, profile: str = "smoke") -> float:
    """Peak RSS (MB) of a fresh process that streams ``n_images`` through the extractor."""
    code = (
        "import torch, json; from diffhrnet_lab.bench import _extractor, _images, peak_rss_mb\n"
        f"fx, _ = _extractor({profile!r}); imgs = _images(1, {size})\n"
        f"for i in range(0, {n_images}, {batch}):\n"
        f"    x = imgs.repeat(min({batch}, {n_images} - i), 1, 1, 1) + 0.001 * i\n"
        "    feats = fx(x); del feats\n"
        "print(json.dumps(peak_rss_mb()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench_features(profile: str = "smoke") -> dict[str, Any]:
    n, size, repeats = _SETTINGS[profile]
    torch.manual_seed(0)
    fx, which = _extractor(profile)
    x = _images(n, size)
    fast, naive = fx(x), fx.naive(x)  # warm-up, and the comparison
    diff = max((fast[k] - naive[k]).abs().max().item() for k in fast)
    t_fast, t_naive = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fx(x)
        t_fast.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fx.naive(x)
        t_naive.append(time.perf_counter() - t0)
    fast_s, naive_s = statistics.median(t_fast), statistics.median(t_naive)
    rss = {str(k): round(stream_peak_rss(k, size, batch=min(n, 4), profile=profile), 1) for k in (1, 8, 32)}
    return {
        "bench": "features", "profile": profile, "model": which, "device": str(x.device),
        "timesteps": list(fx.timesteps), "blocks": list(fx.blocks), "batch": n, "size": size,
        "fast_s": round(fast_s, 4), "naive_s": round(naive_s, 4), "speedup": round(naive_s / fast_s, 3),
        "max_abs_diff": diff, "images_per_s": round(n / fast_s, 2), "naive_images_per_s": round(n / naive_s, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1), "stream_peak_rss_mb": rss,
        "stream_rss_growth_1_to_32": round(rss["32"] / rss["1"], 3),
        "threads": torch.get_num_threads(),
    }


def run(what: str, profile: str, as_json: bool) -> dict[str, Any]:
    if what != "features":
        from .errors import ConfigError

        raise ConfigError(f"unknown benchmark '{what}'; available: features")
    result = bench_features(profile)
    if as_json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>26}: {v}")
    return result
