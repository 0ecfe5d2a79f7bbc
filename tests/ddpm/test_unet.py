"""The diffusion model itself: U-Net presets, noise schedules, saved bundles, the embedded checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from diffhrnet_lab.config import embedded_ddpm_dir
from diffhrnet_lab.data.datasets import LabelledTiles, find_pairs
from diffhrnet_lab.ddpm.sample import denoising_loss
from diffhrnet_lab.ddpm.unet import build_scheduler, build_unet, load_bundle, unet_stride
from diffhrnet_lab.errors import ConfigError, DataError


def _params(m):
    return sum(p.numel() for p in m.parameters())


def test_presets_sizes_and_any_band_count():
    tiny = build_unet("tiny", 4, 64)
    assert 2e6 <= _params(tiny) <= 4e6
    assert 80e6 <= _params(build_unet("base", 3, 256)) <= 130e6
    assert _params(tiny) < _params(build_unet("small", 4, 128)) < 50e6
    for bands in (1, 3, 13):
        u = build_unet("tiny", bands, 32)
        assert u(torch.zeros(1, bands, 32, 32), 10).sample.shape == (1, bands, 32, 32)
    with pytest.raises(ConfigError, match="tiny, small, base"):
        build_unet("huge", 3, 64)


def test_schedules():
    lin, cos = build_scheduler("linear"), build_scheduler("cosine")
    assert lin.config.num_train_timesteps == 1000 and lin.config.prediction_type == "epsilon"
    assert lin.alphas_cumprod[0] > lin.alphas_cumprod[500] > lin.alphas_cumprod[999]
    assert cos.alphas_cumprod[500] > lin.alphas_cumprod[500]  # cosine destroys information more slowly
    with pytest.raises(ConfigError, match="linear, cosine"):
        build_scheduler("sigmoid")


def test_bundle_loading_refuses_pickles(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "ddpm.json").write_text("{}")
    (tmp_path / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(DataError, match="only safetensors"):
        load_bundle(tmp_path)
    with pytest.raises(DataError, match="not a DDPM bundle"):
        load_bundle(tmp_path / "unet")


# -- the embedded checkpoint ---------------------------------------------------------------------
@pytest.mark.slow
def test_embedded_checkpoint_denoises_held_out_tiles_far_better_than_untrained(samples_dir):
    bundle = load_bundle(embedded_ddpm_dir())
    assert bundle.meta["preset"] == "tiny" and bundle.bands == 4 and unet_stride(bundle.unet) == 8
    assert (embedded_ddpm_dir() / "loss_log.csv").exists() and (embedded_ddpm_dir() / "samples.png").exists()
    # The labelled tiles are not in the pretraining pool: they are held out.
    ds = LabelledTiles(find_pairs(samples_dir / "labelled"), "samples", stats=bundle.stats, crop_size=64, seed=1)
    x = torch.stack([ds[i]["image"] for i in range(8)])
    trained = denoising_loss(bundle.unet, bundle.scheduler, x)
    torch.manual_seed(0)
    untrained = denoising_loss(build_unet("tiny", 4, 64).eval(), bundle.scheduler, x)
    assert trained < 0.35 * untrained, (trained, untrained)
    meta = json.loads((embedded_ddpm_dir() / "ddpm.json").read_text())
    assert meta["weights"] == "ema" and meta["sample_size"] == 64
