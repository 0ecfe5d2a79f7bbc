"""DDPM: presets, pretraining (resume, logs, divergence), bundles, and the feature extractor."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from diffhrnet_lab.config import embedded_ddpm_dir, profile_config
from diffhrnet_lab.data.datasets import LabelledTiles, find_pairs
from diffhrnet_lab.data.io import write_geotiff
from diffhrnet_lab.training.checkpoints import latest_checkpoint, list_checkpoints
from diffhrnet_lab.features.extractor import FeatureExtractor, decoder_blocks
from diffhrnet_lab.training.pretrain import TrainingDiverged, pretrain, read_loss_log
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


# -- feature extraction --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def unet_pair():
    torch.manual_seed(0)
    return build_unet("tiny", 4, 64).eval(), build_scheduler()


@pytest.mark.parametrize("hw", [(64, 64), (48, 80), (37, 53), (70, 90)])
@pytest.mark.parametrize("blocks", [(0, 1), (1, 3), (2,)])
def test_batched_early_exit_equals_naive_per_timestep_forward(unet_pair, hw, blocks):
    unet, sched = unet_pair
    fx = FeatureExtractor(unet, sched, (50, 150, 250), blocks, noise_seed=3)
    x = torch.rand(3, 4, *hw) * 2 - 1
    fast, naive = fx(x), fx.naive(x)
    assert set(fast) == set(naive) == {(t, b) for t in (50, 150, 250) for b in blocks}
    for k in fast:
        assert fast[k].shape == naive[k].shape
        torch.testing.assert_close(fast[k], naive[k], atol=1e-5, rtol=0)
        stride = {d["block"]: d["stride"] for d in decoder_blocks(unet)}[k[1]]
        assert fast[k].shape[-2:] == (math.ceil(hw[0] / stride), math.ceil(hw[1] / stride))
        assert fast[k].shape[1] == fx.channels()[k]


def test_upsampled_features_match_input_size(unet_pair):
    fx = FeatureExtractor(*unet_pair, (10,), (0, 2), upsample=True)
    out = fx(torch.zeros(2, 4, 45, 61))
    assert all(v.shape[-2:] == (45, 61) for v in out.values())


def test_shared_noise_makes_features_independent_of_the_batch(unet_pair):
    fx = FeatureExtractor(*unet_pair, (100, 400), (1,), noise_seed=0)
    x = torch.rand(4, 4, 32, 32) * 2 - 1
    together = fx(x)
    alone = fx(x[2:3])
    for k in together:
        torch.testing.assert_close(together[k][2:3], alone[k], atol=1e-5, rtol=1e-5)
    other = FeatureExtractor(*unet_pair, (100, 400), (1,), noise_seed=1)(x[2:3])
    assert not torch.allclose(other[(400, 1)], alone[(400, 1)])


def test_invalid_timesteps_blocks_and_bands_list_valid_values(unet_pair):
    with pytest.raises(ConfigError, match=r"\[1000\] invalid: choose .* \[0, 1000\)"):
        FeatureExtractor(*unet_pair, (50, 1000), (0,))
    with pytest.raises(ConfigError, match=r"block\(s\) \[7\] invalid; valid blocks: 0 \(UpBlock2D"):
        FeatureExtractor(*unet_pair, (50,), (0, 7))
    fx = FeatureExtractor(*unet_pair, (50,), (0,))
    with pytest.raises(ConfigError, match="3 band"):
        fx(torch.zeros(1, 3, 32, 32))


def test_cache_serves_identical_features_and_is_keyed_by_settings(unet_pair, tmp_path):
    fx = FeatureExtractor(*unet_pair, (50, 250), (0, 1), cache_dir=tmp_path)
    x = torch.rand(2, 4, 32, 32) * 2 - 1
    first = fx.extract(x, ids=["a", "b/c"])
    files = sorted(p.name for p in tmp_path.rglob("*.safetensors"))
    assert files == ["a.safetensors", "b__c.safetensors"]
    calls = []
    fx.__class__.__call__, orig = (lambda self, imgs: calls.append(1) or orig(self, imgs)), fx.__class__.__call__
    try:
        again = fx.extract(torch.zeros_like(x), ids=["a", "b/c"])  # served from cache, not recomputed
    finally:
        fx.__class__.__call__ = orig
    assert calls == []
    for k in first:
        torch.testing.assert_close(first[k], again[k])
    other = FeatureExtractor(*unet_pair, (50,), (0, 1), cache_dir=tmp_path)
    assert other.cache_key() != fx.cache_key()


def test_stream_yields_per_batch(unet_pair):
    fx = FeatureExtractor(*unet_pair, (50,), (0,))
    batches = [{"image": torch.zeros(2, 4, 32, 32), "id": ["a", "b"]}, {"image": torch.zeros(1, 4, 32, 32), "id": ["c"]}]
    out = list(fx.stream(batches))
    assert [ids for ids, _ in out] == [["a", "b"], ["c"]] and out[1][1][(50, 0)].shape[0] == 1


# -- pretraining ---------------------------------------------------------------------------------
def _smoke_cfg(**kw):
    cfg = profile_config("smoke").ddpm
    return dataclasses.replace(cfg, **{"steps": 4, "checkpoint_every": 2, "sample_every": 1000, **kw})


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "unet" / "diffusion_pytorch_model.safetensors"))


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


def test_pretrain_outputs_rotation_and_bundle(tmp_path):
    cfg = _smoke_cfg(keep_checkpoints=1, sample_every=4)
    final = pretrain(cfg, tmp_path, progress=False)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_0000004"]
    assert (tmp_path / "samples" / "step_0000004.png").stat().st_size > 5000
    b = load_bundle(final)
    assert b.bands == 4 and b.meta["step"] == 4 and b.stats.high == [255.0] * 4
    assert not list(tmp_path.rglob("*.tmp*")), "no temporary files left behind"


def test_resume_with_different_settings_is_refused(tmp_path):
    pretrain(_smoke_cfg(), tmp_path, stop_after=2, progress=False)
    with pytest.raises(ConfigError, match="batch_size=4 but this run has 2"):
        pretrain(_smoke_cfg(batch_size=2), tmp_path, resume="latest", progress=False)


def test_corrupt_latest_checkpoint_falls_back_with_a_warning(tmp_path):
    pretrain(_smoke_cfg(), tmp_path, progress=False)
    newest = tmp_path / "checkpoints" / "step_0000004" / "optimizer.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.warns(UserWarning, match="optimizer.safetensors: corrupt or truncated"):
        assert latest_checkpoint(tmp_path / "checkpoints").name == "step_0000002"


def test_non_finite_loss_stops_naming_the_step(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(4):
        img = rng.random((4, 40, 40)).astype(np.float32)
        img[0, 0, 0] = np.nan
        write_geotiff(tmp_path / "pool" / f"p{i}.tif", img)
    cfg = _smoke_cfg(pool=str(tmp_path / "pool"))
    with pytest.raises(TrainingDiverged, match=r"at step 1; last good checkpoint: none"):
        pretrain(cfg, tmp_path / "run", progress=False)


def test_bundle_loading_refuses_pickles(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "ddpm.json").write_text("{}")
    (tmp_path / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(DataError, match="only safetensors"):
        load_bundle(tmp_path)
    with pytest.raises(DataError, match="not a DDPM bundle"):
        load_bundle(tmp_path / "unet")


# -- the embedded checkpoint ---------------------------------------------------------------------
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


def test_resume_on_a_pool_with_another_band_count_is_refused(tmp_path):
    pretrain(_smoke_cfg(), tmp_path / "run", stop_after=2, progress=False)
    rng = np.random.default_rng(0)
    for i in range(4):
        write_geotiff(tmp_path / "rgb" / f"p{i}.tif", rng.integers(0, 255, (3, 40, 40)).astype(np.uint8))
    with pytest.raises(DataError, match=r"trained on 4-band tiles but the pool has 3 band\(s\)"):
        pretrain(_smoke_cfg(pool=str(tmp_path / "rgb")), tmp_path / "run", resume="latest", progress=False)


def test_bench_features_prints_one_json_line_with_exact_features():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "diffhrnet_lab.cli", "bench", "features", "--profile", "smoke", "--json"],
                       capture_output=True, text=True, check=True)
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert out["max_abs_diff"] < 1e-4 and out["speedup"] > 0 and out["images_per_s"] > 0
    assert out["timesteps"] == [50, 150, 250] and set(out["stream_peak_rss_mb"]) == {"1", "8", "32"}


def test_each_epoch_loader_draws_new_crops_and_resumes_mid_epoch(samples_dir):
    """Regression: accelerate's loader resets ``dataset.set_epoch`` to its own counter on iteration."""
    from accelerate import Accelerator

    from diffhrnet_lab.data.datasets import UnlabelledPool
    from diffhrnet_lab.training.accelerator import epoch_loader

    pool = UnlabelledPool(samples_dir / "unlabelled", crop_size=16, samples_per_epoch=8, seed=0)
    acc = Accelerator(cpu=True)
    epochs = [torch.cat([b["image"] for b in epoch_loader(acc, pool, 4, 0, e)]) for e in range(3)]
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])
    again = torch.cat([b["image"] for b in epoch_loader(acc, pool, 4, 0, 1)])
    assert torch.equal(again, epochs[1])
    tail = torch.cat([b["image"] for b in epoch_loader(acc, pool, 4, 0, 1, offset=1)])
    assert torch.equal(tail, epochs[1][4:])


def test_bench_diffhrnet_reports_step_ratios_with_and_without_the_feature_cache():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "diffhrnet_lab.cli", "bench", "diffhrnet", "--profile", "smoke", "--json"],
                       capture_output=True, text=True, check=True)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    ratios = out["step_ratio_vs_hrnet"]
    assert set(ratios) == {"without_cache", "with_cache"} and all(v > 0 for v in ratios.values())
    assert out["hrnet_s"] > 0 and out["stages"] == "multistage"
