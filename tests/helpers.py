"""Shared by tests in several folders: repository paths, free ports, launching under ``accelerate``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "data_samples"
NOTEBOOKS = ROOT / "notebooks"
ACCELERATE = Path(sys.executable).with_name("accelerate")


def free_port() -> int:
    """A TCP port the OS says is free now (bind to port 0, read the port back)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(processes: int, *args: str) -> str:
    """Run ``python *args`` alone or as ``processes`` CPU processes under ``accelerate launch``; return stdout.

    ``accelerate launch --cpu --num_processes 2`` starts ONE process unless MPI is set up; torchrun's
    launcher (``--multi_gpu``) with ``ACCELERATE_USE_CPU=true`` starts real gloo processes.  Each run
    must report a world of that size, or the test would compare a run with itself.  The rendezvous
    port comes from the OS, so parallel runs (or a port left in TIME_WAIT) cannot collide.
    """
    env = dict(os.environ)
    if processes == 1:
        cmd = [sys.executable, *args]
    else:
        env["ACCELERATE_USE_CPU"] = "true"
        cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f" {processes} process(es) on cpu" in r.stdout, (r.stdout + r.stderr)[-2000:]
    return r.stdout


def pooled_scores(pred_dir: Path, pairs, scheme) -> dict:
    """mIoU, OA and the confusion matrix of the predictions written to ``pred_dir/<id>.tif`` against
    the pairs' masks, counted here with numpy (not the package's metrics): every pixel of every tile
    pooled, ignored pixels left out, a class absent from truth and prediction left out of the mean."""
    import numpy as np

    from diffhrnet_lab.data.io import read_mask, read_tile

    k = scheme.num_classes
    cm = np.zeros((k, k), np.int64)
    for p in pairs:
        truth = read_mask(p.mask, scheme).astype(np.int64).ravel()
        pred = read_tile(pred_dir / f"{p.id}.tif").image[0].astype(np.int64).ravel()
        keep = truth != scheme.ignore_index
        cm += np.bincount(truth[keep] * k + pred[keep], minlength=k * k).reshape(k, k)
    tp = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    return {"miou": float(np.nanmean(iou)), "oa": float(tp.sum() / cm.sum()), "confusion": cm.tolist()}
