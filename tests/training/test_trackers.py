"""Training loops log to dashboards through accelerate's trackers; read TensorBoard's files back."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffhrnet_lab.cli import main
from diffhrnet_lab.config import profile_config, replace
from diffhrnet_lab.errors import ConfigError
from diffhrnet_lab.training.finetune import finetune, poly_lr
from diffhrnet_lab.training.pretrain import pretrain
from diffhrnet_lab.training.trackers import check_log_with, flat_config

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def _events(folder):
    files = sorted(folder.glob("events.out.tfevents.*"))  # the run's own file (hparams go to a sub-folder)
    assert files, f"no event file under {folder}"
    acc = EventAccumulator(str(files[0].parent), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _tiny_loveda(root: Path) -> Path:
    """LoveDA in mmsegmentation's form, three 32² images: fine-tuning with --dataset end to end."""
    rng = np.random.default_rng(0)
    for split, name in (("train", "0"), ("train", "1"), ("val", "2")):
        for d in ("img_dir", "ann_dir"):
            (root / d / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3)).astype(np.uint8)).save(root / "img_dir" / split / f"{name}.png")
        Image.fromarray(rng.integers(0, 8, (32, 32)).astype(np.uint8)).save(root / "ann_dir" / split / f"{name}.png")
    return root


def test_finetune_logs_loss_lr_val_miou_and_prediction_images_to_tensorboard(tmp_path):
    cfg = profile_config("smoke")
    cfg.data = replace(cfg.data, root=str(_tiny_loveda(tmp_path / "loveda")), dataset="loveda", crop_size=32,
                       batch_size=2)
    cfg.model = replace(cfg.model, method="hrnet", variant="w18_small")
    cfg.train = replace(cfg.train, steps=2, eval_every=2, log_every=1, checkpoint_every=2, eval_window=32,
                        warmup_steps=1, log_with="tensorboard")
    s = finetune(cfg, tmp_path / "run", progress=False)
    assert s["val_groups"] == ["val/2"]  # LoveDA's official val split
    acc = _events(tmp_path / "run" / "logs" / "finetune")
    tags = acc.Tags()
    assert {"train/loss", "train/lr", "val/miou", "val/oa", "val/iou/building"} <= set(tags["scalars"])
    loss = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert [st for st, _ in loss] == [1, 2]
    assert [v for _, v in loss] == pytest.approx([r["loss"] for r in s["history"]], rel=1e-6)
    assert [(e.step, e.value) for e in acc.Scalars("val/miou")] == [(2, pytest.approx(s["history"][-1]["val_miou"]))]
    assert [e.value for e in acc.Scalars("train/lr")] == pytest.approx([poly_lr(0, cfg.train), poly_lr(1, cfg.train)])
    images = [t for t in tags["images"] if t.startswith("val/prediction/")]
    assert images == ["val/prediction/img_dir/val/2"], tags["images"]
    img = acc.Images(images[0])[0]
    assert (img.width, img.height) == (3 * 32, 32)  # image | mask | prediction


def test_pretrain_logs_the_loss_of_loss_log_csv(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(4):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 32, 3)).astype(np.uint8)).save(pool / f"{i}.png")
    cfg = replace(profile_config("smoke").ddpm, pool=str(pool), steps=3, batch_size=4, sample_size=32, log_every=1,
                  sample_every=100, checkpoint_every=2, log_with="tensorboard")
    pretrain(cfg, tmp_path, stop_after=2, progress=False)  # stop before the final sample grid (50 DDPM steps)
    with open(tmp_path / "loss_log.csv") as f:
        rows = list(csv.DictReader(f))
    acc = _events(tmp_path / "logs" / "pretrain")
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [
        (int(r["step"]), pytest.approx(float(r["loss"]), rel=1e-4)) for r in rows]


def test_cli_log_with_and_clear_errors(tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError, match="choose one of tensorboard, wandb, mlflow"):
        check_log_with("tensorbord")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert main(["finetune", "--profile", "smoke", "--method", "hrnet", "--log-with", "wandb",
                 "--out", str(tmp_path / "run")]) == 2
    assert "needs the 'wandb' package: pip install wandb" in capsys.readouterr().err
    flat = flat_config(profile_config("smoke"))
    assert flat["train.log_with"] == "" and flat["features.timesteps"] == "(50, 150, 250)"
