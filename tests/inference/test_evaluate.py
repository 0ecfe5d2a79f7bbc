"""Evaluation of a saved segmenter over a folder: georeferenced predictions, metrics, unlabelled folders."""

from __future__ import annotations

import json
import shutil

import pytest

from diffhrnet_lab.cli import main
from diffhrnet_lab.data.datasets import find_pairs
from diffhrnet_lab.data.labels import SAMPLES
from diffhrnet_lab.data.io import read_tile
from diffhrnet_lab.inference.evaluate import evaluate
from tests.helpers import pooled_scores


@pytest.mark.slow
def test_evaluate_writes_georeferenced_predictions_and_metrics(trained, tmp_path, samples_dir):
    r = evaluate(trained, samples_dir, tmp_path, window=64, progress=False)
    assert r["labelled_tiles"] == 10 and (tmp_path / "metrics.json").exists()
    # the metrics are those of the masks it wrote, pooled over every pixel of every tile
    ref = pooled_scores(tmp_path / "pred", find_pairs(samples_dir / "labelled"), SAMPLES)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["confusion"] == ref["confusion"] and sum(map(sum, ref["confusion"])) == 10 * 256 * 256
    assert saved["miou"] == pytest.approx(ref["miou"], abs=1e-9) and saved["oa"] == pytest.approx(ref["oa"], abs=1e-9)
    assert r["miou"] == saved["miou"]
    src = read_tile(samples_dir / "labelled" / "images" / "scene_03.tif")
    pred = read_tile(tmp_path / "pred" / "scene_03.tif")
    assert pred.crs == src.crs and pred.transform == src.transform and pred.shape == src.shape
    assert read_tile(tmp_path / "pred" / "scene_03.png").bands == 3


@pytest.mark.slow
def test_evaluate_folder_without_labels_says_predictions_only(trained, tmp_path, samples_dir, capsys):
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for name in ("pool_000.tif", "pool_001.tif", "pool_002.tif"):
        shutil.copy(samples_dir / "unlabelled" / name, folder / name)
    assert main(["evaluate", "--checkpoint", str(trained), "--data", str(folder),
                 "--out", str(tmp_path / "out"), "--window", "64"]) == 0
    out = capsys.readouterr().out
    assert "no masks in" in out and "predictions only (3 tile(s))" in out
    assert len(list((tmp_path / "out" / "pred").glob("*.tif"))) == 3 and not (tmp_path / "out" / "metrics.json").exists()
