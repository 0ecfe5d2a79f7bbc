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
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

pytestmark = pytest.mark.slow
ACCELERATE = Path(sys.executable).with_name("accelerate")
if not ACCELERATE.exists():
    pytest.skip("accelerate's launcher is not installed beside this Python", allow_module_level=True)


def _run(out: Path, processes: int, *extra: str) -> None:
    cli = ["-m", "diffhrnet_lab.cli", "pretrain", "--profile", "smoke", "--out", str(out), "--steps", "4", *extra]
    if processes == 1:
        cmd = [sys.executable, *cli]
    else:
        cmd = [str(ACCELERATE), "launch", "--cpu", "--num_processes", str(processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517", *cli]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


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
