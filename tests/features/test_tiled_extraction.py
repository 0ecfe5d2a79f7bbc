"""Whole-tile extraction on the extractor's device (issue 15): same numbers as the per-window CPU
accumulation it replaced, batched to a budget, and a compact 8-bit cache form."""

from __future__ import annotations

import pytest
import torch

from diffhrnet_lab.ddpm.unet import build_scheduler, build_unet
from diffhrnet_lab.experiments.pipeline_bench import compute_tiled_legacy
from diffhrnet_lab.features.extractor import FeatureExtractor
from diffhrnet_lab.features.tile_cache import (cache_bytes_per_pixel, compute_tiled, dequantise, quantise,
                                               tile_features, windows_per_batch)


@pytest.fixture(scope="module")
def fx():
    torch.manual_seed(0)
    return FeatureExtractor(build_unet("tiny", 3, 64).eval(), build_scheduler(), (50, 250), (0, 1, 2))


@pytest.mark.parametrize("batch_size", [1, 3, 0])
def test_device_accumulation_equals_the_legacy_cpu_accumulation(fx, batch_size):
    image = torch.rand(3, 150, 117) * 2 - 1  # non-square, not a multiple of the stride, several windows
    ref = compute_tiled_legacy(fx, image, window=64)
    new = compute_tiled(fx, image, window=64, batch_size=batch_size)
    assert set(new) == set(ref)
    for k in ref:
        assert new[k].dtype == torch.float32 and new[k].shape == ref[k].shape
        torch.testing.assert_close(new[k], ref[k], rtol=0, atol=1e-4)


def test_half_output_is_the_float32_output_rounded(fx):
    image = torch.rand(3, 96, 80) * 2 - 1
    full = compute_tiled(fx, image, window=64)
    half = compute_tiled(fx, image, window=64, out_dtype=torch.float16)
    for k in full:
        assert half[k].dtype == torch.float16
        assert torch.equal(half[k], full[k].half())


def test_windows_per_batch_follows_the_budget(fx):
    per = (4 * 4 * 2 * 64 * 64 * sum(fx.unet.config.block_out_channels))  # the documented bound
    assert windows_per_batch(fx, 64, 64, budget_mb=1) == max(1, 2**20 // per)
    assert windows_per_batch(fx, 64, 64, budget_mb=per * 5 // 2**20 + 1) >= 5


def test_quantisation_is_exact_on_a_255_step_ramp_and_within_half_a_step_elsewhere():
    ramp = torch.arange(256, dtype=torch.float32).reshape(1, 16, 16) * 0.5 - 3.0  # lo -3, step 0.5
    q = quantise(ramp)
    assert q["q"].dtype == torch.uint8 and q["lo"].item() == -3.0 and q["scale"].item() == pytest.approx(127.5 / 255)
    f = torch.randn(5, 9, 11) * torch.tensor([1e-3, 1.0, 10.0, 100.0, 0.5])[:, None, None]
    q = quantise(f)
    back = dequantise(q["q"], q["lo"], q["scale"]).float()
    err = (back - f).abs().amax(dim=(1, 2))
    # half a quantisation step, plus float16 rounding of the dequantised value
    assert torch.all(err <= q["scale"] / 2 + f.abs().amax(dim=(1, 2)) * 2**-10)


def test_uint8_cache_halves_the_bytes_and_stays_close(fx, tmp_path):
    image = torch.rand(3, 72, 72) * 2 - 1
    fx.cache_dir = tmp_path
    try:
        (f16,) = tile_features(fx, [("a", image)], window=64)
        (u8,) = tile_features(fx, [("a", image)], window=64, dtype="uint8")
    finally:
        fx.cache_dir = None
    files = {p.parent.name: p.stat().st_size for p in tmp_path.rglob("a.safetensors")}
    assert set(files) == {"tiled64", "tiled64_uint8"}
    assert files["tiled64_uint8"] < 0.6 * files["tiled64"]
    for a, b in zip(f16, u8):
        assert b.dtype == torch.float16
        rng = (a.float().flatten(1).amax(1) - a.float().flatten(1).amin(1))[:, None, None]
        assert torch.all((a.float() - b.float()).abs() <= rng / 255 + 1e-2 * a.float().abs() + 1e-3)
    assert cache_bytes_per_pixel(fx, "uint8") == cache_bytes_per_pixel(fx) / 2


def test_bytes_per_pixel_of_the_default_features_is_the_issue_figure(samples_dir):
    """The embedded tiny DDPM with the default t (3) and blocks (0 at 1/4, 1 at 1/2, 96 channels
    each): 3 · (96/16 + 96/4) = 90 values, 180 bytes in float16 — the figure issue 15 measured."""
    from diffhrnet_lab.config import FeatureConfig
    from diffhrnet_lab.ddpm.unet import load_bundle

    fc = FeatureConfig()
    fx = FeatureExtractor.from_bundle(load_bundle(samples_dir / "ddpm_tiny"), fc.timesteps, fc.blocks)
    assert cache_bytes_per_pixel(fx) == 180.0
    assert cache_bytes_per_pixel(fx, "uint8") == 90.0
