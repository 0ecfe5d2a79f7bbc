"""The batched DDPM feature extractor: early exit, shared noise, validation, cache, streaming."""

from __future__ import annotations

import math

import pytest
import torch

from diffhrnet_lab.ddpm.unet import build_scheduler, build_unet
from diffhrnet_lab.errors import ConfigError
from diffhrnet_lab.features.extractor import FeatureExtractor, decoder_blocks


# -- feature extraction --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def unet_pair():
    torch.manual_seed(0)
    return build_unet("tiny", 4, 64).eval(), build_scheduler()


FAST = {((37, 53), (0, 1)), ((70, 90), (1, 3)), ((48, 80), (2,))}  # odd sizes and every block in the fast set


@pytest.mark.parametrize("hw,blocks", [
    (hw, b) if (hw, b) in FAST else pytest.param(hw, b, marks=pytest.mark.slow)
    for b in ((0, 1), (1, 3), (2,)) for hw in ((64, 64), (48, 80), (37, 53), (70, 90))])
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


def test_upsampled_features_are_the_block_features_resized_bilinearly_to_the_input(unet_pair):
    import torch.nn.functional as F

    x = torch.rand(2, 4, 45, 61) * 2 - 1
    up = FeatureExtractor(*unet_pair, (10,), (0, 2), upsample=True)(x)
    native = FeatureExtractor(*unet_pair, (10,), (0, 2))(x)
    assert native[(10, 0)].shape[-2:] != (45, 61)  # block 0 is coarser than the input: it is resized
    for k, v in up.items():
        assert v.shape[-2:] == (45, 61)
        expected = F.interpolate(native[k], size=(45, 61), mode="bilinear", align_corners=False)
        torch.testing.assert_close(v, expected, atol=1e-5, rtol=0)


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
    batches = [{"image": torch.rand(2, 4, 32, 32), "id": ["a", "b"]}, {"image": torch.rand(1, 4, 32, 32), "id": ["c"]}]
    out = list(fx.stream(batches))
    assert [ids for ids, _ in out] == [["a", "b"], ["c"]] and out[1][1][(50, 0)].shape[0] == 1
    torch.testing.assert_close(out[0][1][(50, 0)], fx(batches[0]["image"])[(50, 0)])
