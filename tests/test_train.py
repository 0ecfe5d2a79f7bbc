"""Fine-tuning, evaluation, checkpoints: end to end on the embedded samples (CPU)."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from diffhrnet_lab.cli import main
from diffhrnet_lab.config import embedded_ddpm_dir, profile_config, replace
from diffhrnet_lab.data.datasets import find_pairs
from diffhrnet_lab.data.io import read_mask, read_tile
from diffhrnet_lab.data.labels import SAMPLES
from diffhrnet_lab.ddpm.unet import load_bundle
from diffhrnet_lab.errors import DataError
from diffhrnet_lab.training.finetune import finetune
from diffhrnet_lab.models.segmenters import load_segmenter
from diffhrnet_lab.inference.evaluate import evaluate


def _cfg(method="hrnet", steps=40, **model):
    cfg = profile_config("smoke")
    cfg.data = replace(cfg.data, batch_size=4, crop_size=64)
    cfg.train = replace(cfg.train, steps=steps, eval_every=steps, checkpoint_every=steps, lr=3e-3, warmup_steps=5)
    cfg.model = replace(cfg.model, method=method, **model)
    return cfg


def _chance_miou(samples_dir, val_groups) -> float:
    """Expected mIoU of a classifier that guesses each pixel's class at random with the class frequencies."""
    counts = np.zeros(SAMPLES.num_classes)
    for p in find_pairs(samples_dir / "labelled"):
        if p.group in val_groups:
            counts += np.bincount(read_mask(p.mask, SAMPLES).ravel(), minlength=SAMPLES.num_classes)
    f = counts / counts.sum()
    iou = f * f / (2 * f - f * f + 1e-12)  # E[TP]/(E[TP]+E[FP]+E[FN]) with q_c = p_c
    return float(iou[counts > 0].mean())


def _check_learned(summary, samples_dir):
    losses = [r["loss"] for r in summary["history"]]
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8]), losses
    chance = _chance_miou(samples_dir, summary["val_groups"])
    assert summary["best_miou"] > 1.5 * chance, (summary["best_miou"], chance)


def test_hrnet_fine_tune_lowers_loss_and_beats_chance(tmp_path, samples_dir):
    s = finetune(_cfg("hrnet"), tmp_path, progress=False)
    _check_learned(s, samples_dir)
    assert (tmp_path / "best" / "model.safetensors").exists() and (tmp_path / "history.csv").exists()


def test_diffhrnet_fine_tune_lowers_loss_and_beats_chance(tmp_path, samples_dir):
    s = finetune(_cfg("diffhrnet", stages="multistage", fusion="gated"), tmp_path, progress=False)
    _check_learned(s, samples_dir)
    meta = json.loads((tmp_path / "best" / "model.json").read_text())
    assert meta["ddpm"]["path"] == "embedded" and len(meta["ddpm"]["sha256"]) == 64


def test_resumed_fine_tune_equals_uninterrupted(tmp_path):
    cfg = _cfg("diffhrnet", steps=6, stages="late", fusion="concat")
    cfg.train = replace(cfg.train, checkpoint_every=3, eval_every=3)
    a = finetune(cfg, tmp_path / "a", progress=False)
    finetune(cfg, tmp_path / "b", stop_after=3, progress=False)
    b = finetune(cfg, tmp_path / "b", resume="latest", progress=False)
    drop = lambda hist: [{k: v for k, v in r.items() if k != "seconds"} for r in hist]  # noqa: E731
    assert drop(a["history"]) == drop(b["history"])
    from safetensors.torch import load_file

    wa, wb = (load_file(str(tmp_path / x / "last" / "model.safetensors")) for x in "ab")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("ft")
    finetune(_cfg("diffhrnet", steps=4, stages="late", fusion="add"), out, progress=False)
    return out / "best"


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


def test_checkpoint_of_another_variant_or_class_count_names_both(trained, tmp_path):
    with pytest.raises(DataError, match=r"checkpoint is diffhrnet w18_small with 7 classes, but num_classes=6"):
        load_segmenter(trained, expect={"num_classes": 6})
    with pytest.raises(DataError, match=r"checkpoint has 'w18_small'"):
        load_segmenter(trained, expect={"variant": "w48"})
    bad = tmp_path / "bad"
    shutil.copytree(trained, bad)
    meta = json.loads((bad / "model.json").read_text())
    meta["model"]["variant"], meta["num_classes"] = "w18", 6
    (bad / "model.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"weights do not fit diffhrnet w18 with 6 classes .* in the file, .* in the model"):
        load_segmenter(bad)


def test_changed_ddpm_weights_are_detected(trained, tmp_path):
    other = tmp_path / "ddpm"
    shutil.copytree(embedded_ddpm_dir(), other)
    b = load_bundle(other)
    from diffhrnet_lab.ddpm.unet import save_bundle

    with torch.no_grad():
        next(b.unet.parameters()).add_(1.0)
    save_bundle(other, b.unet, b.scheduler, b.stats, b.meta)
    with pytest.raises(DataError, match="DDPM weights differ"):
        load_segmenter(trained, ddpm_path=other)


class _Booby:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickles_are_refused_without_being_unpickled(tmp_path, samples_dir):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": _Booby(str(marker))}))
    r = subprocess.run([sys.executable, "-m", "diffhrnet_lab.cli", "evaluate", "--checkpoint", str(evil), "--data",
                        str(samples_dir), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "refused without being opened" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(DataError, match="refused"):
        load_segmenter(evil)
    # a pickle under the expected names is still never unpickled
    fake = tmp_path / "fake"
    (fake / "unet").mkdir(parents=True)
    (fake / "model.json").write_text("{}")
    (fake / "model.safetensors").write_bytes(evil.read_bytes())
    (fake / "ddpm.json").write_text("{}")
    (fake / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(evil.read_bytes())
    with pytest.raises(DataError, match="corrupt"):
        load_segmenter(fake)
    with pytest.raises(DataError):
        load_bundle(fake)
    assert not marker.exists()


def test_cli_finetune_then_evaluate(tmp_path, capsys):
    assert main(["finetune", "--profile", "smoke", "--method", "hrnet", "--out", str(tmp_path / "run"),
                 "--set", "train.steps=2", "--set", "train.eval_every=2"]) == 0
    assert "best validation mIoU" in capsys.readouterr().out
    assert main(["finetune", "--profile", "smoke", "--set", "model.fuse=add", "--out", str(tmp_path / "x")]) == 2
    assert "model has no field 'fuse'; fields: method" in capsys.readouterr().err


def test_timm_parity_backbone_can_start_from_timm_weights(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    from diffhrnet_lab.models.hrnet import convert_timm_state_dict

    ref = timm.create_model("hrnet_w18_small_v2", pretrained=False, features_only=True, feature_location="")
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "timm.safetensors"))
    cfg = _cfg("hrnet", steps=1, init_timm=str(tmp_path / "timm.safetensors"))
    cfg.train = replace(cfg.train, lr=0.0, warmup_steps=1, eval_every=1)  # lr 0: weights stay as loaded
    finetune(cfg, tmp_path / "run", progress=False)
    model, _ = load_segmenter(tmp_path / "run" / "last")
    expected = convert_timm_state_dict(ref.state_dict(), model.backbone)
    key = "stage2.0.branches.0.0.conv1.weight"
    assert torch.allclose(model.backbone.state_dict()[key], expected[key])
    assert torch.allclose(model.backbone.state_dict()["stem.conv1.weight"], expected["stem.conv1.weight"])
