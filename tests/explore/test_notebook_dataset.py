"""Notebooks read a dataset as it is downloaded (issue 18): ``stage_paths(..., dataset=NAME)``."""

from __future__ import annotations

import numpy as np
import pytest

from diffhrnet_lab.config import profile_config
from PIL import Image
from diffhrnet_lab.errors import ConfigError, DataError
from diffhrnet_lab.experiments.sweep import experiment_config
from diffhrnet_lab.explore.notebook import stage_paths


def _loveda(root):
    """Two LoveDA images as released: Train/Urban/{images_png,masks_png}, index masks, 0 = no-data."""
    rng = np.random.default_rng(0)
    for i in (1, 2):
        for sub, arr in (("images_png", rng.integers(0, 255, (16, 16, 3))), ("masks_png", rng.integers(0, 8, (16, 16)))):
            (root / "Train" / "Urban" / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr.astype(np.uint8)).save(root / "Train" / "Urban" / sub / f"{i}.png")
    return root


def test_a_named_dataset_is_read_through_its_layout_and_reaches_the_config(tmp_path):
    root = _loveda(tmp_path / "LoveDA")
    paths = stage_paths(profile_config("smoke"), str(root), dataset="loveda")
    assert paths.scheme == "loveda" and paths.dataset == "loveda"
    assert sorted(p.image.name for p in paths.pairs()) == ["1.png", "2.png"]
    cfg = paths.apply(profile_config("smoke"))
    assert cfg.data.dataset == "loveda" and cfg.data.root == str(root) and cfg.data.scheme == "loveda"
    c = experiment_config("smoke", data_root=str(root), dataset="loveda")
    assert c.data.dataset == "loveda" and c.data.scheme == "loveda"


def test_a_named_dataset_needs_its_folder_and_the_right_layout(tmp_path):
    with pytest.raises(ConfigError, match="needs data_root"):
        stage_paths(profile_config("smoke"), "", dataset="loveda")
    (tmp_path / "other" / "x").mkdir(parents=True)
    with pytest.raises(DataError, match="not a LoveDA folder"):
        stage_paths(profile_config("smoke"), str(tmp_path / "other"), dataset="loveda")
