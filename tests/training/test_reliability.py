"""Reliability through the real commands: SIGKILL mid-run and mid-checkpoint, corrupt checkpoints,
bad data of every kind, a full or unwritable disk, and same-seed determinism."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from affine import Affine
from safetensors.torch import load_file

from diffhrnet_lab.cli import main
from diffhrnet_lab.config import profile_config, replace
from diffhrnet_lab.data.datasets import LabelledTiles, find_pairs
from diffhrnet_lab.data.io import read_tile, write_geotiff, write_png
from diffhrnet_lab.data.labels import SAMPLES
from diffhrnet_lab.errors import DataError
from diffhrnet_lab.training.finetune import finetune
from tests.helpers import pooled_scores

CLI = [sys.executable, "-m", "diffhrnet_lab.cli"]
PRETRAIN = ["pretrain", "--profile", "smoke", "--steps", "6"]  # smoke: a checkpoint every 2 steps
FINETUNE = ["finetune", "--profile", "smoke", "--method", "hrnet"]  # smoke: 6 steps, a checkpoint every 3


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def _unet(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step_{step:07d}" / "unet" / "diffusion_pytorch_model.safetensors"))


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _rows(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def pretrain_reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    assert _cli(*PRETRAIN, "--out", str(out)).returncode == 0
    return out


# -- 1. SIGKILL ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_pretrain_killed_while_writing_a_checkpoint_resumes_to_the_uninterrupted_result(tmp_path, pretrain_reference):
    run = tmp_path / "run"
    r = _cli(*PRETRAIN, "--out", str(run), env={"DHL_FAULT": "kill:checkpoint-write:4"})
    assert r.returncode == -signal.SIGKILL
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if not p.name.startswith(".")) == ["step_0000002"]
    assert [p for p in ckpts.iterdir() if ".tmp-" in p.name], "the half-written step 4 stayed hidden"
    r = _cli(*PRETRAIN, "--out", str(run), "--resume", "latest")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stdout and "step_0000002 at step 2" in r.stdout
    assert "removed .step_0000004.tmp-" in r.stdout
    assert not [p for p in ckpts.iterdir() if p.name.startswith(".")]
    assert _equal(_unet(run, 6), _unet(pretrain_reference, 6))
    final, ref = run / "final" / "unet" / "diffusion_pytorch_model.safetensors", pretrain_reference / "final" / "unet" / "diffusion_pytorch_model.safetensors"
    assert _equal(load_file(str(final)), load_file(str(ref)))
    assert [r["loss"] for r in _rows(run / "loss_log.csv")] == [r["loss"] for r in _rows(pretrain_reference / "loss_log.csv")]


@pytest.mark.slow
def test_pretrain_killed_between_checkpoints_resumes_to_the_uninterrupted_result(tmp_path, pretrain_reference):
    """A pre-emption at an arbitrary moment, made repeatable: SIGKILL right after optimizer step 5,
    one step past the step-4 checkpoint (``DHL_FAULT=kill:step:5``)."""
    run = tmp_path / "run"
    r = _cli(*PRETRAIN, "--out", str(run), env={"DHL_FAULT": "kill:step:5"})
    assert r.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (run / "final").exists()
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step_0000002", "step_0000004"]
    log = run / "loss_log.csv"
    assert [r["step"] for r in _rows(log)] == ["1", "2", "3", "4"]  # step 5 trained, never logged
    r = _cli(*PRETRAIN, "--out", str(run), "--resume", "latest")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "step_0000004 at step 4" in r.stdout
    assert _equal(_unet(run, 6), _unet(pretrain_reference, 6))
    assert [r["step"] for r in _rows(log)] == [str(i) for i in range(1, 7)]  # each step logged once
    assert [r["loss"] for r in _rows(log)] == [r["loss"] for r in _rows(pretrain_reference / "loss_log.csv")]


@pytest.mark.slow
def test_finetune_killed_while_writing_a_checkpoint_resumes_to_the_uninterrupted_result(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert _cli(*FINETUNE, "--out", str(ref)).returncode == 0
    r = _cli(*FINETUNE, "--out", str(run), env={"DHL_FAULT": "kill:checkpoint-write:6"})
    assert r.returncode == -signal.SIGKILL and not (run / "summary.json").exists()
    r = _cli(*FINETUNE, "--out", str(run), "--resume", "latest")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "at step 3" in r.stdout
    assert _equal(load_file(str(run / "last" / "model.safetensors")), load_file(str(ref / "last" / "model.safetensors")))
    a, b = json.loads((ref / "summary.json").read_text()), json.loads((run / "summary.json").read_text())
    assert a["best_miou"] == b["best_miou"] and a["best_step"] == b["best_step"]
    assert [r["loss"] for r in a["history"]] == [r["loss"] for r in b["history"]]


# -- 2. corrupt checkpoints ----------------------------------------------------------------------
@pytest.mark.slow
def test_corrupt_checkpoint_is_named_and_latest_falls_back(tmp_path):
    run = tmp_path / "run"
    assert _cli(*PRETRAIN, "--out", str(run), "--stop-after", "4").returncode == 0
    bad = run / "checkpoints" / "step_0000004" / "unet" / "diffusion_pytorch_model.safetensors"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    r = _cli(*PRETRAIN, "--out", str(run), "--resume", str(bad.parents[1]))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{bad}: corrupt or truncated checkpoint file" in r.stderr
    r = _cli(*PRETRAIN, "--out", str(run), "--resume", "latest")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "skipping unusable checkpoint" in r.stderr and "diffusion_pytorch_model.safetensors" in r.stderr
    assert "step_0000002 at step 2" in r.stdout


# -- 5. bad data, through the CLI and the Python API ---------------------------------------------
def _dataset(root: Path, n: int = 3, size=(72, 80), bands: int = 4, dtype=np.uint8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    hi = 4000 if dtype == np.uint16 else 255
    for i in range(n):
        tf = Affine.translation(500 * i, 0) @ Affine.scale(0.5, -0.5)
        write_geotiff(root / "images" / f"t{i}.tif", rng.integers(0, hi, (bands, *size)).astype(dtype), crs="EPSG:32640", transform=tf)
        write_geotiff(root / "masks" / f"t{i}.tif", rng.integers(0, 7, size).astype(np.uint8), crs="EPSG:32640", transform=tf)
    return root


def _corrupt(root):
    (root / "images" / "t1.tif").write_bytes(b"II*\x00" + os.urandom(300))
    return "images/t1.tif"


def _mismatch(root):
    write_geotiff(root / "masks" / "t2.tif", np.zeros((50, 80), np.uint8))
    return "t2.tif"


def _unknown_colour(root):
    shutil.rmtree(root / "masks")
    colours = np.array([[0, 0, 0], [255, 0, 255]], np.uint8)  # black is no class of 'samples'
    for i in range(3):
        write_png(root / "masks" / f"t{i}.png", colours[np.random.default_rng(i).integers(0, 2, (72, 80))])
    return "masks/t0.png"


def _wrong_bands(root):
    write_geotiff(root / "images" / "t2.tif", np.zeros((3, 72, 80), np.uint8) + 9)
    return "t2.tif"


def _all_nodata(root):
    write_geotiff(root / "images" / "t0.tif", np.zeros((4, 72, 80), np.uint8), nodata=0)
    return "t0.tif"


BAD = {"corrupt tile": (_corrupt, "t1.tif"), "mismatched sizes": (_mismatch, "t2.tif"),
       "unknown colours": (_unknown_colour, "t0.png"), "wrong band count": (_wrong_bands, "t2.tif"),
       "all nodata": (_all_nodata, "t0.tif")}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_data_is_one_clear_error_naming_the_file(tmp_path, case, capsys):
    root = _dataset(tmp_path / "data")
    make, name = BAD[case]
    make(root)
    for cmd in (["check-data", str(root)],
                ["finetune", "--profile", "smoke", "--method", "hrnet", "--data", str(root), "--out", str(tmp_path / "o")]):
        assert main(cmd) == 2, (case, cmd[0])
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if "error:" in line]
        assert len(errors) == 1 and name in errors[0] and "Traceback" not in err, (case, err)
    assert not (tmp_path / "o" / "checkpoints").exists()  # refused before any training
    with pytest.raises(DataError, match=name.replace(".", r"\.")):
        LabelledTiles(find_pairs(root), "samples")


GOOD = {"16-bit imagery": dict(dtype=np.uint16), "non-square tiles": dict(size=(40, 150)),
        "tiles smaller than the crop": dict(size=(30, 45))}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(GOOD))
def test_unusual_but_valid_data_trains_and_evaluates(tmp_path, case, capsys):
    root = _dataset(tmp_path / "data", **GOOD[case])
    run = tmp_path / "run"
    assert main(["finetune", "--profile", "smoke", "--method", "hrnet", "--data", str(root), "--out", str(run),
                 "--set", "train.steps=2", "--set", "train.eval_every=2", "--set", "data.crop_size=64"]) == 0
    assert main(["evaluate", "--checkpoint", str(run / "last"), "--data", str(root), "--out", str(tmp_path / "ev")]) == 0
    for p in find_pairs(root):
        pred = read_tile(tmp_path / "ev" / "pred" / f"{p.id}.tif")
        assert pred.shape == read_tile(p.image).shape  # whole tile predicted, georeferenced like the input
        assert pred.transform == read_tile(p.image).transform
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    ref = pooled_scores(tmp_path / "ev" / "pred", find_pairs(root), SAMPLES)
    assert metrics["confusion"] == ref["confusion"] and metrics["miou"] == pytest.approx(ref["miou"], abs=1e-9)


# -- 6. no room, no permission -------------------------------------------------------------------
def test_full_disk_is_refused_before_training(tmp_path, monkeypatch, capsys):
    import shutil as sh

    usage = sh.disk_usage(tmp_path)
    monkeypatch.setattr("diffhrnet_lab.fileio.shutil.disk_usage", lambda p: usage._replace(free=10 * 2**20))
    for cmd in (["pretrain", "--profile", "smoke", "--out", str(tmp_path / "p")],
                ["finetune", "--profile", "smoke", "--method", "hrnet", "--out", str(tmp_path / "f")]):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert "only 10 MiB free" in err and "need about" in err, err
    assert not (tmp_path / "p" / "checkpoints").exists() and not (tmp_path / "f" / "checkpoints").exists()


@pytest.mark.parametrize("command", [["pretrain", "--profile", "smoke"], ["finetune", "--profile", "smoke"]])
def test_unwritable_output_is_refused_before_training(tmp_path, command, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main([*command, "--out", str(blocker / "run")]) == 2
    assert f"{blocker / 'run'}: output folder is not writable" in capsys.readouterr().err


# -- 7. determinism --------------------------------------------------------------------------------
@pytest.mark.slow
def test_same_seed_gives_identical_metrics_on_two_demo_runs(tmp_path, samples_dir):
    """The smoke demo twice from scratch (the quick one: ``make bench`` records it too)."""
    for name in ("a", "b"):
        assert main(["demo", "--profile", "smoke", "--out", str(tmp_path / name), "--data", str(samples_dir)]) == 0
    a, b = (json.loads((tmp_path / n / "results.json").read_text()) for n in ("a", "b"))
    for method in ("HRNet", "Diff-HRNet"):
        assert a[method] == b[method]
    ma = load_file(str(tmp_path / "a" / "diffhrnet" / "last" / "model.safetensors"))
    mb = load_file(str(tmp_path / "b" / "diffhrnet" / "last" / "model.safetensors"))
    assert _equal(ma, mb)


@pytest.mark.slow
def test_finetune_api_is_deterministic_with_feature_cache_and_augmentation(tmp_path):
    cfg = profile_config("smoke")
    cfg.model = replace(cfg.model, method="ddpm_mlp")
    cfg.features = replace(cfg.features, cache=True, cache_dir=str(tmp_path / "fc"))
    s1 = finetune(cfg, tmp_path / "a", progress=False)
    s2 = finetune(cfg, tmp_path / "b", progress=False)
    assert [r["loss"] for r in s1["history"]] == [r["loss"] for r in s2["history"]]
    assert s1["best_scores"] == s2["best_scores"]
