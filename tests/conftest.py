from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from diffhrnet_lab.config import dubai_dir
from diffhrnet_lab.data.io import write_geotiff

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "data_samples"


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
