"""The ``colab`` profile fits one 16 GB T4, by the estimates the notebooks print (``meta`` device only).

The memory checks would fail for a profile that does not fit: the ``full`` profile's DDPM, counted
the same way, is several times over the limit.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from diffhrnet_lab.config import PROFILES, profile_config, replace
from diffhrnet_lab.errors import ConfigError
from diffhrnet_lab.experiments.sweep import ABLATIONS, experiment_config
from diffhrnet_lab.explore import estimates
from diffhrnet_lab.explore.estimates import count_step, estimate
from diffhrnet_lab.training import accelerator

T4_BUDGET = 14e9  # of the T4's 16 GB (15 GB usable): room for the CUDA context and the allocator's slack
NOTEBOOK_MINUTES = 30


@pytest.fixture(scope="module")
def colab():
    return profile_config("colab")


def test_colab_is_a_profile_sized_for_a_t4(colab):
    assert "colab" in PROFILES
    assert colab.ddpm.preset == "small" and colab.ddpm.sample_size == 128 and 16 <= colab.ddpm.batch_size <= 32
    assert colab.model.variant == "w18_small" and 256 <= colab.data.crop_size <= 512 and 8 <= colab.data.batch_size <= 16
    assert colab.ddpm.mixed_precision == colab.train.mixed_precision == "auto-fp16"


def test_colab_ddpm_pretraining_fits_a_t4_and_full_would_not(colab):
    est = estimate(colab, "pretrain", "t4")
    assert est.activation_bytes > 1e9, "a 22 M U-Net at 128², batch 32: gigabytes of activations, not nothing"
    assert est.peak_bytes < T4_BUDGET, str(est)
    full = estimate(profile_config("full"), "pretrain", "t4")
    assert full.peak_bytes > 4 * T4_BUDGET, str(full)


def test_colab_finetuning_fits_a_t4(colab):
    for method in ("hrnet", "diffhrnet", "ddpm_mlp"):  # ddpm_mlp in fp16 once failed on float features
        cfg = dataclasses.replace(colab, model=replace(colab.model, method=method))
        est = estimate(cfg, "finetune", "t4")
        assert 0 < est.peak_bytes < T4_BUDGET, str(est)
    full = estimate(profile_config("full"), "finetune", "t4")
    assert full.peak_bytes > T4_BUDGET, str(full)


def test_colab_notebooks_take_at_most_about_half_an_hour_on_a_t4(colab):
    minutes = estimate(colab, "pretrain", "t4").seconds / 60  # notebook 01
    assert 10 < minutes <= NOTEBOOK_MINUTES, minutes
    runs_03 = [dataclasses.replace(colab, model=replace(colab.model, method=m)) for m in ("hrnet", "diffhrnet")]
    assert sum(estimate(c, "finetune", "t4").seconds for c in runs_03) / 60 <= NOTEBOOK_MINUTES
    runs_04 = [experiment_config("colab", **p) for p in ABLATIONS["stages"].values()]  # 04's default ablation
    assert sum(estimate(c, "finetune", "t4").seconds for c in runs_04) / 60 <= NOTEBOOK_MINUTES


def test_estimates_scale_with_batch_and_steps(colab):
    one = estimate(colab, "pretrain", "t4")
    cfg = dataclasses.replace(colab, ddpm=replace(colab.ddpm, batch_size=16, steps=2 * colab.ddpm.steps))
    half = estimate(cfg, "pretrain", "t4")
    assert half.activation_bytes == pytest.approx(one.activation_bytes / 2)
    assert half.seconds == pytest.approx(one.seconds)
    assert half.fixed_bytes == one.fixed_bytes
    assert estimate(colab, "pretrain", "cpu").seconds > 100 * one.seconds
    with pytest.raises(ConfigError, match="unknown stage"):
        estimate(colab, "sampling", "t4")
    with pytest.raises(ConfigError, match="unknown device"):
        estimate(colab, "pretrain", "tpu")


def test_count_step_counts_saved_activations_and_flops_exactly():
    b, c, h = 2, 3, 8
    flops, act, trainable, frozen = count_step(
        lambda: nn.Sequential(nn.Conv2d(c, 5, 3, padding=1, bias=False), nn.ReLU()),
        lambda m: (torch.zeros(b, c, h, h),), lambda out: out.sum())
    # the convolution saves its input (its weight is a parameter), ReLU its output
    assert act == 4 * (b * c * h * h + b * 5 * h * h)
    assert trainable == 5 * c * 9 and frozen == 0
    # forward 2·MACs; backward: the weight gradient only (the input needs none): 2·MACs
    macs = b * 5 * h * h * c * 9
    assert flops == 4 * macs


def test_mixed_precision_choices(monkeypatch):
    assert accelerator.resolve_mixed_precision("auto-fp16") in ("no", "bf16", "fp16")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert accelerator.resolve_mixed_precision("auto-fp16") == "no"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(accelerator, "_native_bf16", lambda: False)  # a T4: bf16 only emulated
    assert accelerator.resolve_mixed_precision("auto-fp16") == "fp16"
    assert accelerator.resolve_mixed_precision("auto") == "no"
    monkeypatch.setattr(accelerator, "_native_bf16", lambda: True)
    assert accelerator.resolve_mixed_precision("auto-fp16") == accelerator.resolve_mixed_precision("auto") == "bf16"
    assert estimates.mixed_precision_on("auto-fp16", "t4") and not estimates.mixed_precision_on("auto", "t4")
