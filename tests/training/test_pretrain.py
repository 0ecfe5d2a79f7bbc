"""DDPM pretraining: exact resume, outputs and rotation, refused resumes, divergence."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from diffhrnet_lab.config import profile_config
from diffhrnet_lab.data.io import write_geotiff
from diffhrnet_lab.ddpm.unet import load_bundle
from diffhrnet_lab.errors import ConfigError, DataError
from diffhrnet_lab.training.checkpoints import latest_checkpoint, list_checkpoints
from diffhrnet_lab.training.pretrain import TrainingDiverged, pretrain, read_loss_log


# -- pretraining ---------------------------------------------------------------------------------
def _smoke_cfg(**kw):
    cfg = profile_config("smoke").ddpm
    return dataclasses.replace(cfg, **{"steps": 4, "checkpoint_every": 2, "sample_every": 1000, **kw})


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.mark.slow
def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(tmp_path):
    cfg = _smoke_cfg()
    pretrain(cfg, tmp_path / "a", progress=False)
    pretrain(cfg, tmp_path / "b", stop_after=2, progress=False)
    assert [p.name for p in list_checkpoints(tmp_path / "b" / "checkpoints")] == ["step_0000002"]
    assert not (tmp_path / "b" / "final").exists()
    pretrain(cfg, tmp_path / "b", resume="latest", progress=False)
    wa, wb = _weights(tmp_path / "a" / "final"), _weights(tmp_path / "b" / "final")  # EMA weights
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ra = _weights(tmp_path / "a" / "checkpoints" / "step_0000004")
    rb = _weights(tmp_path / "b" / "checkpoints" / "step_0000004")
    assert all(torch.equal(ra[k], rb[k]) for k in ra)
    log_a, log_b = read_loss_log(tmp_path / "a" / "loss_log.csv"), read_loss_log(tmp_path / "b" / "loss_log.csv")
    assert [r["step"] for r in log_b] == ["1", "2", "3", "4"]
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]


def test_pretraining_with_workers_writing_into_the_batch_pool_equals_the_main_process_loop(tmp_path):
    """Two workers on the CPU write each batch into shared buffers reused every 12 batches
    (``data.batch_pool``); 14 steps must give the losses and weights of the loop without workers."""
    cfg = _smoke_cfg(steps=14, checkpoint_every=14)
    pretrain(cfg, tmp_path / "main", progress=False)
    pretrain(dataclasses.replace(cfg, num_workers=2), tmp_path / "workers", progress=False)
    wa, wb = _weights(tmp_path / "main" / "final"), _weights(tmp_path / "workers" / "final")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    log_a, log_b = (read_loss_log(tmp_path / x / "loss_log.csv") for x in ("main", "workers"))
    assert len(log_a) == 14 and [r["loss"] for r in log_a] == [r["loss"] for r in log_b]


@pytest.mark.slow
def test_pretrain_outputs_rotation_and_bundle(tmp_path):
    cfg = _smoke_cfg(keep_checkpoints=1, sample_every=4)
    final = pretrain(cfg, tmp_path, progress=False)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_0000004"]
    assert (tmp_path / "samples" / "step_0000004.png").stat().st_size > 5000
    b = load_bundle(final)
    assert b.bands == 4 and b.meta["step"] == 4 and b.stats.high == [255.0] * 4
    assert not list(tmp_path.rglob("*.tmp*")), "no temporary files left behind"


@pytest.mark.slow
def test_resume_with_different_settings_is_refused(tmp_path):
    pretrain(_smoke_cfg(), tmp_path, stop_after=2, progress=False)
    with pytest.raises(ConfigError, match="batch_size=4 but this run has 2"):
        pretrain(_smoke_cfg(batch_size=2), tmp_path, resume="latest", progress=False)


@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back_with_a_warning(tmp_path):
    pretrain(_smoke_cfg(), tmp_path, progress=False)
    newest = tmp_path / "checkpoints" / "step_0000004" / "optimizer.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.warns(UserWarning, match="optimizer.safetensors: corrupt or truncated"):
        assert latest_checkpoint(tmp_path / "checkpoints").name == "step_0000002"


def test_a_pool_of_fewer_tiles_than_a_batch_trains_one_batch_per_epoch(tmp_path):
    """Three large scenes and a batch of 4: each epoch is one batch of crops drawn over the tiles
    (it used to stop with "fewer than one batch")."""
    rng = np.random.default_rng(0)
    for i in range(3):
        write_geotiff(tmp_path / "pool" / f"p{i}.tif", (rng.random((4, 48, 48)) * 255).astype(np.float32))
    cfg = _smoke_cfg(pool=str(tmp_path / "pool"), steps=3, checkpoint_every=3)
    pretrain(cfg, tmp_path / "run", progress=False)
    log = read_loss_log(tmp_path / "run" / "loss_log.csv")
    assert [(r["step"], r["epoch"]) for r in log] == [("1", "0"), ("2", "1"), ("3", "2")]
    assert load_bundle(tmp_path / "run" / "final").meta["step"] == 3


def test_non_finite_loss_stops_naming_the_step(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(4):
        img = rng.random((4, 40, 40)).astype(np.float32)
        img[0, 0, 0] = np.nan
        write_geotiff(tmp_path / "pool" / f"p{i}.tif", img)
    cfg = _smoke_cfg(pool=str(tmp_path / "pool"))
    with pytest.raises(TrainingDiverged, match=r"at step 1; last good checkpoint: none"):
        pretrain(cfg, tmp_path / "run", progress=False)


@pytest.mark.slow
def test_resume_on_a_pool_with_another_band_count_is_refused(tmp_path):
    pretrain(_smoke_cfg(), tmp_path / "run", stop_after=2, progress=False)
    rng = np.random.default_rng(0)
    for i in range(4):
        write_geotiff(tmp_path / "rgb" / f"p{i}.tif", rng.integers(0, 255, (3, 40, 40)).astype(np.uint8))
    with pytest.raises(DataError, match=r"trained on 4-band tiles but the pool has 3 band\(s\)"):
        pretrain(_smoke_cfg(pool=str(tmp_path / "rgb")), tmp_path / "run", resume="latest", progress=False)
