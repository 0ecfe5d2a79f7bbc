"""The feature cache: whole-tile DDPM features computed once, cropped with the image, reused by runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffhrnet_lab.config import profile_config, replace
from diffhrnet_lab.data.datasets import LabelledTiles, aligned_crop_d4, find_pairs
from diffhrnet_lab.data.io import BandStats
from diffhrnet_lab.features.extractor import FeatureExtractor
from diffhrnet_lab.features.tile_cache import tile_features
from diffhrnet_lab.ddpm.unet import build_scheduler, build_unet
from diffhrnet_lab.errors import ConfigError
from diffhrnet_lab.models.segmenters import DDPMPixelClassifier, DiffHRNet
from diffhrnet_lab.training.finetune import finetune
from diffhrnet_lab.models.segmenters import load_segmenter
from diffhrnet_lab.inference.evaluate import validate


@pytest.fixture(scope="module")
def fx():
    torch.manual_seed(0)
    return FeatureExtractor(build_unet("tiny", 4, 64), build_scheduler(), (50, 250), (0, 1))


def test_tiled_features_equal_direct_features_when_one_window_covers_the_tile(fx):
    x = torch.randn(4, 96, 120)
    tiled = fx.compute_tiled(x, window=128)
    with torch.no_grad():
        direct = fx.compute(x[None])
    for k in fx.keys:
        assert tiled[k].shape == direct[k][0].shape
        torch.testing.assert_close(tiled[k], direct[k][0], atol=1e-5, rtol=0)


def test_tiled_features_equal_the_only_window_that_covers_a_region(fx):
    """128 x 200 in windows of 128 (step 96): columns 0..71 are seen by the first window alone."""
    x = torch.randn(4, 128, 200)
    tiled = fx.compute_tiled(x, window=128, overlap=0.25)
    with torch.no_grad():
        first = fx.compute(x[None, :, :, :128])
    for t, b in fx.keys:
        s = fx.info[b]["stride"]
        assert tiled[(t, b)].shape[-2:] == (128 // s, 200 // s)
        torch.testing.assert_close(tiled[(t, b)][:, :, : 72 // s], first[(t, b)][0, :, :, : 72 // s], atol=1e-5, rtol=0)
        assert torch.isfinite(tiled[(t, b)]).all()


@pytest.mark.parametrize("seed", range(6))
def test_aligned_crop_moves_features_with_the_image(seed):
    """Features = the image average-pooled by their stride: after crop + D4 they must still be exactly
    the pooled image crop, which holds only if offsets and transforms agree."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(2, 72, 88)).astype(np.float32)
    mask = rng.integers(0, 5, size=(72, 88)).astype(np.uint8)
    strides = [4, 2]
    feats = [F.avg_pool2d(torch.from_numpy(image)[None], s)[0] for s in strides]
    img_c, mask_c, feat_c = aligned_crop_d4(rng, image, mask, feats, strides, crop=32, augment=True, ignore_index=255)
    assert img_c.shape == (2, 32, 32) and mask_c.shape == (32, 32)
    for f, s in zip(feat_c, strides):
        torch.testing.assert_close(f, F.avg_pool2d(torch.from_numpy(img_c)[None], s)[0], atol=1e-6, rtol=0)


def test_aligned_crop_pads_tiles_smaller_than_the_crop():
    rng = np.random.default_rng(0)
    image, mask = np.ones((3, 20, 24), np.float32), np.zeros((20, 24), np.uint8)
    feats = [torch.ones(8, 5, 6)]
    img_c, mask_c, feat_c = aligned_crop_d4(rng, image, mask, feats, [4], crop=32, augment=False, ignore_index=255)
    assert img_c.shape == (3, 32, 32) and feat_c[0].shape == (8, 8, 8)
    assert (mask_c[20:] == 255).all() and (mask_c[:, 24:] == 255).all() and (mask_c[:20, :24] == 0).all()


@pytest.mark.parametrize("model_cls", ["multistage", "late", "mlp"])
def test_model_given_its_own_features_equals_model_computing_them(fx, model_cls):
    torch.manual_seed(2)
    m = (DDPMPixelClassifier(5, fx) if model_cls == "mlp" else DiffHRNet(5, 4, "w18_small", fx, model_cls, "concat")).eval()
    x = torch.randn(2, 4, 64, 96)
    with torch.no_grad():
        feats = fx.compute(x)
        a, b = m(x), m(x, [feats[k] for k in fx.keys])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_tile_features_are_written_once_and_reused(fx, tmp_path):
    fx.cache_dir = tmp_path
    try:
        items = [("scene/a", torch.randn(4, 64, 80)), ("b", torch.randn(4, 48, 48))]
        first = tile_features(fx, items, window=64)
        files = sorted(tmp_path.rglob("*.safetensors"))
        assert len(files) == 2 and "scene__a" in files[1].name + files[0].name
        stamps = [f.stat().st_mtime_ns for f in files]
        again = tile_features(fx, items, window=64)
        assert [f.stat().st_mtime_ns for f in files] == stamps
        for s1, s2 in zip(first, again):
            assert all(torch.equal(a, b) for a, b in zip(s1, s2))
            assert all(a.dtype == torch.float16 for a in s1)
        assert first[0][0].shape == (fx.channels()[fx.keys[0]], 64 // 4, 80 // 4)
    finally:
        fx.cache_dir = None


def test_finetune_with_the_feature_cache_trains_and_validates_on_cached_features(samples_dir, tmp_path):
    cfg = profile_config("smoke")
    cfg.data = replace(cfg.data, batch_size=2, crop_size=64)
    cfg.model = replace(cfg.model, method="diffhrnet", stages="late", fusion="concat")
    cfg.features = replace(cfg.features, cache=True, cache_dir=str(tmp_path / "fc"))
    cfg.train = replace(cfg.train, steps=4, eval_every=4, checkpoint_every=4, eval_window=0)
    s = finetune(cfg, tmp_path / "run", progress=False)
    n_tiles = len(find_pairs(samples_dir / "labelled"))
    assert len(list((tmp_path / "fc").rglob("*.safetensors"))) == n_tiles
    assert all(np.isfinite(r["loss"]) for r in s["history"]) and 0 <= s["best_miou"] <= 1
    # validation on cached features = the model run on the same whole-tile features
    model, meta = load_segmenter(tmp_path / "run" / "last")
    val = [p for p in find_pairs(samples_dir / "labelled") if p.group in s["val_groups"]]
    ds = LabelledTiles(val, "samples", stats=BandStats.from_dict(meta["stats"]))
    model.extractor.cache_dir = tmp_path / "fc"
    feats = tile_features(model.extractor, [(p.id, torch.from_numpy(im)) for p, im in zip(ds.pairs, ds.images)], window=cfg.features.cache_window)
    ds.attach_features(feats, [model.extractor.info[b]["stride"] for _, b in model.extractor.keys])
    _, preds = validate(model, ds, 0, torch.device("cpu"))
    with torch.no_grad():
        direct = model(torch.from_numpy(ds.images[0])[None], [f[None] for f in feats[0]])[0].argmax(0)
    assert np.array_equal(preds[0], direct.numpy())


def test_feature_cache_refuses_a_ddpm_being_finetuned(tmp_path):
    cfg = profile_config("smoke")
    cfg.model = replace(cfg.model, method="diffhrnet", finetune_ddpm=True)
    cfg.features = replace(cfg.features, cache=True)
    with pytest.raises(ConfigError, match="frozen DDPM"):
        finetune(cfg, tmp_path / "run", progress=False)
