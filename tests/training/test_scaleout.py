"""Scale-out through ``accelerate launch``: 2 CPU processes (gloo) against 1, same global batch and seed.

Pretraining uses ``split_batches=True`` (the configured batch is global) and every process draws the
global batch's noise and timesteps from the same generator, keeping its slice; so the two runs see
the same numbers and differ only in float summation order (two half-batch gradients averaged by
all-reduce instead of one full-batch mean).  That is ~1e-7 relative per gradient; Adam rescales
early updates towards ±lr, which amplifies it, so weights are compared to 1e-4: a third of one
update's largest size at lr = 3e-4, far below any real divergence.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import ACCELERATE, SAMPLES, launch

pytestmark = pytest.mark.slow
if not ACCELERATE.exists():
    pytest.skip("accelerate's launcher is not installed beside this Python", allow_module_level=True)


def _run(out: Path, processes: int, *extra: str) -> None:
    launch(processes, "-m", "diffhrnet_lab.cli", "pretrain", "--profile", "smoke", "--out", str(out), "--steps", "4",
            *extra)


def _weights(run: Path, step: int = 4):
    return load_file(str(run / "checkpoints" / f"step_{step:07d}" / "unet" / "diffusion_pytorch_model.safetensors"))


def _log(run: Path):
    with open(run / "loss_log.csv") as fh:
        return list(csv.DictReader(fh))


def test_two_process_pretraining_matches_one_process_and_resumes(tmp_path):
    _run(tmp_path / "one", 1)
    _run(tmp_path / "two", 2)
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    # the main process alone writes: one row per step, one sample grid, one final bundle
    assert [r["loss"] for r in _log(tmp_path / "one")] == [r["loss"] for r in _log(tmp_path / "two")]
    assert len(list((tmp_path / "two" / "samples").glob("*.png"))) == 1
    assert (tmp_path / "two" / "final" / "ddpm.json").exists()
    # a multi-process run stopped part-way resumes to the same place
    _run(tmp_path / "resumed", 2, "--stop-after", "2")
    assert not (tmp_path / "resumed" / "final").exists()
    _run(tmp_path / "resumed", 2, "--resume", "latest")
    c = _weights(tmp_path / "resumed")
    assert max((b[k] - c[k]).abs().max().item() for k in b) < 1e-6
    assert len(_log(tmp_path / "resumed")) == 4
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_pool_is_sharded_no_tile_twice_per_epoch_and_same_batches_as_one_process(tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    launch(1, str(Path(__file__).with_name("shard_probe.py")), str(one))
    launch(2, str(Path(__file__).with_name("shard_probe.py")), str(two))
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    n_tiles = len(list((SAMPLES / "unlabelled").glob("*.tif")))
    for epoch in (0, 1):
        ids = [r[3] for r in b if r[0] == epoch]
        assert len(ids) == len(set(ids)) == n_tiles  # every tile once per epoch, none twice
        per_proc = [{r[3] for r in b if r[0] == epoch and r[2] == p} for p in (0, 1)]
        assert not per_proc[0] & per_proc[1] and len(per_proc[0]) == len(per_proc[1]) == n_tiles // 2
        for batch in {r[1] for r in a if r[0] == epoch}:  # the two halves make up the 1-process batch
            assert sorted(r[3] for r in b if r[:2] == [epoch, batch]) == sorted(r[3] for r in a if r[:2] == [epoch, batch])
    assert [r[3] for r in a if r[0] == 0] != [r[3] for r in a if r[0] == 1]  # a new order each epoch


FINETUNE = ["-m", "diffhrnet_lab.cli", "finetune", "--profile", "smoke", "--method", "diffhrnet", "--stages", "late",
            "--fusion", "concat", "--set", "train.norm_eval=true", "--set", "train.steps=4", "--set", "train.eval_every=2",
            "--set", "train.checkpoint_every=2", "--set", "data.batch_size=4", "--set", "features.cache=true",
            "--set", "model.head_dropout=0"]


def _model(run: Path, which: str = "last"):
    return load_file(str(run / which / "model.safetensors"))


def test_two_process_finetuning_matches_one_process_and_resumes(tmp_path):
    """Three things make a sample's output depend on its batch, and the run switches each off:
    BatchNorm statistics (``train.norm_eval``: every sample normalised alone; on GPUs SyncBatchNorm
    pools the statistics instead), the head's dropout masks (drawn per process, so the same sample
    gets another mask when the batch is split: ``model.head_dropout=0``), and the DDPM features,
    whose convolutions round differently at another batch size (~1e-6) and which an un-normalised
    network amplifies (``features.cache``: computed per tile, identical in both runs).

    What is left is the float summation order of the gradient all-reduce (~1e-7 relative).  Adam
    divides each gradient by its own running size, so for the few weights whose gradient is ~0 that
    noise can flip the sign of a whole update (lr): no weight may differ by more than 2·lr per step,
    and almost all must agree to 1e-4.  A broken split (a process seeing the whole batch, or other
    samples) changes the step-1 loss by percents and most weights by ~lr: this test catches it."""
    launch(1, *FINETUNE, "--out", str(tmp_path / "one"))
    out2 = launch(2, *FINETUNE, "--out", str(tmp_path / "two"))
    a, b = _model(tmp_path / "one"), _model(tmp_path / "two")
    assert set(a) == set(b)
    diff = torch.cat([(a[k].float() - b[k].float()).abs().flatten() for k in a])
    lr, steps = 2e-3, 4  # the smoke profile's train.lr
    assert diff.max().item() <= 2 * lr * steps
    assert (diff > 1e-4).float().mean().item() < 0.01
    h1 = list(csv.DictReader(open(tmp_path / "one" / "history.csv")))
    h2 = list(csv.DictReader(open(tmp_path / "two" / "history.csv")))
    assert len(h1) == len(h2) == 4  # the main process alone writes the history
    for r1, r2 in zip(h1, h2):
        assert abs(float(r1["loss"]) - float(r2["loss"])) <= 1e-3 * max(1.0, float(r1["loss"]))
        assert r1["val_miou"] == r2["val_miou"] or abs(float(r1["val_miou"]) - float(r2["val_miou"])) < 1e-3
    assert out2.count("best validation mIoU") == 2  # each process reports; only one wrote (atomic folders)
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["step_0000002", "step_0000004"]
    assert not list((tmp_path / "two").glob(".*tmp*"))
    # a 2-process run stopped at step 2 resumes to the uninterrupted 2-process result
    launch(2, *FINETUNE, "--out", str(tmp_path / "resumed"), "--stop-after", "2")
    assert not (tmp_path / "resumed" / "last").exists()
    launch(2, *FINETUNE, "--out", str(tmp_path / "resumed"), "--resume", "latest")
    c = _model(tmp_path / "resumed")
    assert max((b[k].float() - c[k].float()).abs().max().item() for k in b) < 1e-6
