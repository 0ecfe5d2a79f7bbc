"""Shared fixtures, and markers given by folder: every test under ``notebooks/`` is marked
``notebooks`` (``test_browser.py`` is also ``browser``); every test using the ``dubai`` fixture is
``realdata``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from diffhrnet_lab.config import dubai_dir, profile_config, replace
from diffhrnet_lab.data.io import write_geotiff
from tests.helpers import SAMPLES


@pytest.fixture
def samples_dir() -> Path:
    return SAMPLES


@pytest.fixture
def dubai() -> Path:
    d = dubai_dir()
    if d is None:
        pytest.skip("real Dubai tiles absent: set DHL_DUBAI_DIR to ../shared/data/dubai_aerial (.ci/run does)")
    return d


@pytest.fixture
def make_labelled(tmp_path):
    """Write a small labelled folder of ``n`` index-mask GeoTIFF tiles; return its root."""

    def make(n: int = 3, size=(40, 48), bands: int = 3, dtype=np.uint8, classes: int = 7, seed: int = 0,
             root: Path | None = None) -> Path:
        root = root or tmp_path / "labelled"
        rng = np.random.default_rng(seed)
        for i in range(n):
            mask = rng.integers(0, classes, size=size).astype(np.uint8)
            image = rng.integers(0, 200, size=(bands, *size)).astype(dtype)
            tf = Affine.translation(1000 * i, 5000) @ Affine.scale(0.5, -0.5)
            write_geotiff(root / "images" / f"t{i}.tif", image, crs="EPSG:32640", transform=tf)
            write_geotiff(root / "masks" / f"t{i}.tif", mask, crs="EPSG:32640", transform=tf)
        return root

    return make


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A Diff-HRNet (late fusion, add) fine-tuned for 4 steps on the samples: its ``best`` checkpoint."""
    from diffhrnet_lab.training.finetune import finetune

    cfg = profile_config("smoke")
    cfg.data = replace(cfg.data, batch_size=4, crop_size=64)
    cfg.train = replace(cfg.train, steps=4, eval_every=4, checkpoint_every=4, lr=3e-3, warmup_steps=5)
    cfg.model = replace(cfg.model, method="diffhrnet", stages="late", fusion="add")
    out = tmp_path_factory.mktemp("ft")
    finetune(cfg, out, progress=False)
    return out / "best"


_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = Path(str(item.path)).resolve()
        if _HERE / "notebooks" in path.parents:
            item.add_marker(pytest.mark.notebooks)
        if "dubai" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.realdata)


# Never collected, even when named on the command line (``pytest tests/**/*.py``): not tests.
collect_ignore = ["helpers.py", "training/shard_probe.py"]
