"""Fine-tuning end to end on the embedded samples (CPU): learning, exact resume, timm init, feature cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffhrnet_lab.config import profile_config, replace
from diffhrnet_lab.data.datasets import LabelledTiles, find_pairs
from diffhrnet_lab.data.io import BandStats, read_mask
from diffhrnet_lab.data.labels import SAMPLES
from diffhrnet_lab.errors import ConfigError
from diffhrnet_lab.features.tile_cache import tile_features
from diffhrnet_lab.inference.evaluate import validate
from diffhrnet_lab.inference.metrics import scores
from diffhrnet_lab.models.segmenters import load_segmenter
from diffhrnet_lab.training.finetune import finetune


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


@pytest.mark.slow
def test_hrnet_fine_tune_lowers_loss_and_beats_chance(tmp_path, samples_dir):
    s = finetune(_cfg("hrnet"), tmp_path, progress=False)
    _check_learned(s, samples_dir)
    assert (tmp_path / "best" / "model.safetensors").exists() and (tmp_path / "history.csv").exists()


@pytest.mark.slow
def test_diffhrnet_fine_tune_lowers_loss_and_beats_chance(tmp_path, samples_dir):
    s = finetune(_cfg("diffhrnet", stages="multistage", fusion="gated"), tmp_path, progress=False)
    _check_learned(s, samples_dir)
    meta = json.loads((tmp_path / "best" / "model.json").read_text())
    assert meta["ddpm"]["path"] == "embedded" and len(meta["ddpm"]["sha256"]) == 64


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_finetune_with_the_feature_cache_trains_and_validates_on_cached_features(samples_dir, tmp_path):
    cfg = profile_config("smoke")
    cfg.data = replace(cfg.data, batch_size=2, crop_size=64)
    cfg.model = replace(cfg.model, method="diffhrnet", stages="late", fusion="concat")
    cfg.features = replace(cfg.features, cache=True, cache_dir=str(tmp_path / "fc"))
    cfg.train = replace(cfg.train, steps=4, eval_every=4, checkpoint_every=4, eval_window=0)
    s = finetune(cfg, tmp_path / "run", progress=False)
    n_tiles = len(find_pairs(samples_dir / "labelled"))
    assert len(list((tmp_path / "fc").rglob("*.safetensors"))) == n_tiles
    assert [r["step"] for r in s["history"]] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in s["history"])
    assert s["best_step"] == 4 and s["history"][-1]["val_miou"] == s["best_miou"]  # one validation, at the end
    # validation on cached features = the model run on the same whole-tile features
    model, meta = load_segmenter(tmp_path / "run" / "last")
    val = [p for p in find_pairs(samples_dir / "labelled") if p.group in s["val_groups"]]
    ds = LabelledTiles(val, "samples", stats=BandStats.from_dict(meta["stats"]))
    model.extractor.cache_dir = tmp_path / "fc"
    feats = tile_features(model.extractor, [(p.id, torch.from_numpy(im)) for p, im in zip(ds.pairs, ds.images)], window=cfg.features.cache_window)
    ds.attach_features(feats, [model.extractor.info[b]["stride"] for _, b in model.extractor.keys])
    cm, preds = validate(model, ds, 0, torch.device("cpu"))
    with torch.no_grad():
        direct = model(torch.from_numpy(ds.images[0])[None], [f[None] for f in feats[0]])[0].argmax(0)
    assert np.array_equal(preds[0], direct.numpy())
    # the run's validation mIoU is that of these predictions (the last weights are the best: one evaluation)
    assert scores(cm).miou == pytest.approx(s["best_miou"], abs=1e-9)


@pytest.mark.parametrize("method,cache", [("hrnet", False), ("ddpm_mlp", True)])
def test_fine_tune_on_8_bit_crops_finished_on_the_device_equals_the_float_path(tmp_path, monkeypatch, make_labelled,
                                                                               method, cache):
    """What a GPU run does (``compact_images_for`` is true off the CPU), forced on the CPU: workers
    hand out 8-bit crops (and float16 cached features) and the loop finishes each batch before its
    step.  Losses and weights must equal those of the float path exactly."""
    import diffhrnet_lab.training.finetune as ft
    from safetensors.torch import load_file

    root = make_labelled(5, size=(40, 48), bands=4)  # smaller than the crop: padding, traced back on the "device"
    cfg = _cfg(method, steps=3)
    cfg.data = replace(cfg.data, root=str(root), photometric=0.2, crop_size=64)
    cfg.features = replace(cfg.features, cache=cache, cache_dir=str(tmp_path / "fc") if cache else "")
    cfg.train = replace(cfg.train, num_workers=0, eval_window=0)
    a = finetune(cfg, tmp_path / "float", progress=False)
    compact = []
    finish = LabelledTiles.finish
    monkeypatch.setattr(ft, "compact_images_for", lambda device: True)
    monkeypatch.setattr(LabelledTiles, "finish", lambda self, batch: compact.append(self.compact) or finish(self, batch))
    b = finetune(cfg, tmp_path / "compact", progress=False)
    assert compact == [True] * 3
    drop = lambda hist: [{k: v for k, v in r.items() if k != "seconds"} for r in hist]  # noqa: E731
    assert drop(a["history"]) == drop(b["history"])
    wa, wb = (load_file(str(tmp_path / x / "last" / "model.safetensors")) for x in ("float", "compact"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_fine_tune_with_workers_writing_into_the_batch_pool_equals_the_main_process_loop(tmp_path, make_labelled):
    """On the CPU, workers write each batch into a pool of shared buffers reused every 12 batches
    (``data.batch_pool``); 14 steps through 2 workers must train exactly as the loop without workers."""
    from safetensors.torch import load_file

    root = make_labelled(5, size=(80, 96), bands=3)
    cfg = _cfg("hrnet", steps=14)
    cfg.data = replace(cfg.data, root=str(root), photometric=0.2, crop_size=64)
    cfg.train = replace(cfg.train, num_workers=0, eval_window=0)
    a = finetune(cfg, tmp_path / "main", progress=False)
    cfg.train = replace(cfg.train, num_workers=2)
    b = finetune(cfg, tmp_path / "workers", progress=False)
    drop = lambda hist: [{k: v for k, v in r.items() if k != "seconds"} for r in hist]  # noqa: E731
    assert len(a["history"]) == 14 and drop(a["history"]) == drop(b["history"])
    wa, wb = (load_file(str(tmp_path / x / "last" / "model.safetensors")) for x in ("main", "workers"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_feature_cache_refuses_a_ddpm_being_finetuned(tmp_path):
    cfg = profile_config("smoke")
    cfg.model = replace(cfg.model, method="diffhrnet", finetune_ddpm=True)
    cfg.features = replace(cfg.features, cache=True)
    with pytest.raises(ConfigError, match="frozen DDPM"):
        finetune(cfg, tmp_path / "run", progress=False)


def test_train_step_adds_the_weighted_loss_of_the_features_only_head():
    """loss = CE(fused logits) + aux_weight · CE(features-only logits), both on the same labels."""
    from accelerate import Accelerator

    from diffhrnet_lab.training.finetune import train_step

    class Two(torch.nn.Module):
        aux_weight = 0.25

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([1.0, -1.0, 0.5]).reshape(1, 3, 1, 1))
            self.aux_logits = None

        def forward(self, x, streams=None):
            self.aux_logits = 2 * x * self.w
            return x * self.w

    x = torch.ones(1, 1, 1, 2)
    mask = torch.tensor([[[0, 2]]])
    model = Two()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    loss = train_step(model, {"image": x, "mask": mask}, opt, Accelerator(cpu=True), 0.0, None, 255)
    logits = torch.tensor([1.0, -1.0, 0.5])  # the same at both pixels; labels 0 and 2

    def ce(z):
        return (torch.nn.functional.cross_entropy(z[None], torch.tensor([0]))
                + torch.nn.functional.cross_entropy(z[None], torch.tensor([2]))) / 2

    want = ce(logits) + 0.25 * ce(2 * logits)
    torch.testing.assert_close(loss, want)
    assert model.aux_logits is None  # released after the loss


def test_cross_entropy_is_pytorchs_mean_bit_for_bit_and_zero_on_an_all_ignored_batch():
    """Where any pixel counts, the loss and its gradients are PyTorch's own (recorded runs stay as
    they were); where none does, PyTorch gives NaN and ours gives 0 with zero gradients."""
    import torch.nn.functional as F

    from diffhrnet_lab.training.finetune import cross_entropy

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 6, 7, generator=g)
    target = torch.randint(0, 5, (2, 6, 7), generator=g)
    target[0, :3] = 255
    weights = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0])
    for w in (None, weights):
        ours, ref = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        loss, want = cross_entropy(ours, target, w, 255), F.cross_entropy(ref, target, weight=w, ignore_index=255)
        loss.backward(), want.backward()
        assert torch.equal(loss, want) and torch.equal(ours.grad, ref.grad)
    empty = torch.full_like(target, 255)
    assert F.cross_entropy(logits, empty, ignore_index=255).isnan()
    x = logits.clone().requires_grad_()
    loss = cross_entropy(x, empty, None, 255)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))
