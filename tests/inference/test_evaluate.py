"""Evaluation of a saved segmenter over a folder: georeferenced predictions, metrics, unlabelled folders."""

from __future__ import annotations

import shutil

from diffhrnet_lab.cli import main
from diffhrnet_lab.data.io import read_tile
from diffhrnet_lab.inference.evaluate import evaluate


def test_evaluate_writes_georeferenced_predictions_and_metrics(trained, tmp_path, samples_dir):
    r = evaluate(trained, samples_dir, tmp_path, window=64, progress=False)
    assert r["labelled_tiles"] == 10 and 0 <= r["miou"] <= 1 and (tmp_path / "metrics.json").exists()
    src = read_tile(samples_dir / "labelled" / "images" / "scene_03.tif")
    pred = read_tile(tmp_path / "pred" / "scene_03.tif")
    assert pred.crs == src.crs and pred.transform == src.transform and pred.shape == src.shape
    assert read_tile(tmp_path / "pred" / "scene_03.png").bands == 3


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
