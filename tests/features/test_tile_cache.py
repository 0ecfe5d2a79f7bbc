"""The feature cache: whole-tile DDPM features computed once in windows, stored, reused by runs."""

from __future__ import annotations

import pytest
import torch

from diffhrnet_lab.ddpm.unet import build_scheduler, build_unet
from diffhrnet_lab.features.extractor import FeatureExtractor
from diffhrnet_lab.features.tile_cache import tile_features


@pytest.fixture(scope="module")
def fx():
    torch.manual_seed(0)
    return FeatureExtractor(build_unet("tiny", 4, 64), build_scheduler(), (50, 250), (0, 1))


def test_tiled_features_equal_direct_features_when_one_window_covers_the_tile(fx):
    x = torch.randn(4, 96, 120)
    tiled = fx.compute_tiled(x, window=128)
    with torch.no_grad():
        direct = fx.compute(x[None])
    for k in fx.keys:
        assert tiled[k].shape == direct[k][0].shape
        torch.testing.assert_close(tiled[k], direct[k][0], atol=1e-5, rtol=0)


def test_tiled_features_equal_the_only_window_that_covers_a_region(fx):
    """128 x 200 in windows of 128 (step 96): columns 0..71 are seen by the first window alone."""
    x = torch.randn(4, 128, 200)
    tiled = fx.compute_tiled(x, window=128, overlap=0.25)
    with torch.no_grad():
        first = fx.compute(x[None, :, :, :128])
    for t, b in fx.keys:
        s = fx.info[b]["stride"]
        assert tiled[(t, b)].shape[-2:] == (128 // s, 200 // s)
        torch.testing.assert_close(tiled[(t, b)][:, :, : 72 // s], first[(t, b)][0, :, :, : 72 // s], atol=1e-5, rtol=0)
        assert torch.isfinite(tiled[(t, b)]).all()


def test_tile_features_are_written_once_and_reused(fx, tmp_path):
    fx.cache_dir = tmp_path
    try:
        items = [("scene/a", torch.randn(4, 64, 80)), ("b", torch.randn(4, 48, 48))]
        first = tile_features(fx, items, window=64)
        files = sorted(tmp_path.rglob("*.safetensors"))
        assert len(files) == 2 and "scene__a" in files[1].name + files[0].name
        stamps = [f.stat().st_mtime_ns for f in files]
        again = tile_features(fx, items, window=64)
        assert [f.stat().st_mtime_ns for f in files] == stamps
        for s1, s2 in zip(first, again):
            assert all(torch.equal(a, b) for a, b in zip(s1, s2))
            assert all(a.dtype == torch.float16 for a in s1)
        assert first[0][0].shape == (fx.channels()[fx.keys[0]], 64 // 4, 80 // 4)
    finally:
        fx.cache_dir = None


_RSS_PROBE = r"""
import gc, json, re, sys
from pathlib import Path
import torch
from diffhrnet_lab.ddpm.unet import build_scheduler, build_unet
from diffhrnet_lab.features.extractor import FeatureExtractor
from diffhrnet_lab.features.tile_cache import tile_features

def anon_mb():
    return int(re.search(r"RssAnon:\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024

torch.manual_seed(0)
fx = FeatureExtractor(build_unet("tiny", 4, 64), build_scheduler(), (50, 250), (2, 3))  # full resolution
fx.cache_dir = Path(sys.argv[1]) if sys.argv[1] else None
image = torch.randn(4, 384, 384)
tile_features(fx, [("warm", image[:, :128, :128])], window=128)  # allocator and kernels warmed once
gc.collect()
before = anon_mb()
streams = tile_features(fx, [("tile", image)], window=128)[0]
gc.collect()
after = anon_mb()
total = sum(float(s.float().sum()) for s in streams)  # every page read
print(json.dumps({"held_mb": after - before, "feature_mb": sum(s.nbytes for s in streams) / 2**20,
                  "finite": total == total}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="reads RssAnon (Linux)")
def test_cached_tile_features_are_page_cache_not_anonymous_memory(tmp_path):
    """A scene's cached streams are held for a whole run: read back from the file, they cost page
    cache the OS can drop; kept as computed, they are anonymous memory (the control)."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}  # freed buffers go back
    runs = {}
    for name, cache in (("cached", str(tmp_path)), ("in_memory", "")):
        out = subprocess.run([sys.executable, "-c", _RSS_PROBE, cache], capture_output=True, text=True, env=env,
                             check=True)
        runs[name] = json.loads(out.stdout.strip().splitlines()[-1])
    size = runs["cached"]["feature_mb"]
    assert size > 50 and runs["in_memory"]["feature_mb"] == size and runs["cached"]["finite"]
    assert runs["in_memory"]["held_mb"] > 0.8 * size, runs  # the control: computed streams stay resident
    assert runs["cached"]["held_mb"] < 0.2 * size, runs
