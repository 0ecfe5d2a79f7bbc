import numpy as np
import pytest
import torch

import torch.nn.functional as F

from diffhrnet_lab.data.datasets import (LabelledTiles, Pair, UnlabelledPool, aligned_crop_d4, find_pairs, label_budget,
                                         random_crop_d4, split_by_group, split_test)
from diffhrnet_lab.data.io import write_geotiff, write_png
from diffhrnet_lab.data.labels import DUBAI
from diffhrnet_lab.errors import DataError


def test_crop_and_d4_apply_identically_to_image_and_mask():
    """Make band 0 of the image equal to the mask: after any crop/flip/rot90 they must still agree."""
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 7, (37, 53)).astype(np.uint8)
    image = np.stack([mask.astype(np.float32), rng.random((37, 53), dtype=np.float32)])
    seen = set()
    for i in range(40):
        im, m = random_crop_d4(np.random.default_rng(i), [image, mask], 24, True, [0.0, 255])
        assert im.shape == (2, 24, 24) and m.shape == (24, 24)
        np.testing.assert_array_equal(im[0], m)
        seen.add(im[1].tobytes()[:64])
    assert len(seen) > 30  # the transforms actually vary


def test_small_tiles_are_padded_with_ignore():
    mask = np.ones((10, 12), np.uint8)
    image = np.ones((1, 10, 12), np.float32)
    im, m = random_crop_d4(np.random.default_rng(0), [image, mask], 16, False, [0.0, 255])
    assert m.shape == (16, 16) and (m == 255).sum() == 16 * 16 - 120 and (im == 0).sum() == 16 * 16 - 120


def test_labelled_tiles_items_are_reproducible_per_epoch(make_labelled):
    root = make_labelled(3, size=(40, 48))
    ds = LabelledTiles(find_pairs(root), "samples", crop_size=32, augment=True, samples_per_epoch=7, seed=3)
    assert len(ds) == 7
    a = ds[5]
    assert a["image"].shape == (3, 32, 32) and a["image"].dtype == torch.float32
    assert a["mask"].dtype == torch.int64 and a["image"].abs().max() <= 1
    assert torch.equal(ds[5]["image"], a["image"])
    ds.set_epoch(1)
    assert not torch.equal(ds[5]["image"], a["image"])
    ds.set_epoch(0)
    assert torch.equal(ds[5]["mask"], a["mask"])


def test_whole_tiles_without_crop(make_labelled):
    root = make_labelled(2, size=(40, 48))
    ds = LabelledTiles(find_pairs(root), "samples")
    assert ds[1]["image"].shape == (3, 40, 48)
    assert ds.class_pixel_counts().sum() == 2 * 40 * 48


def test_size_mismatch_names_both_files(tmp_path, make_labelled):
    root = make_labelled(1, size=(40, 48))
    write_geotiff(root / "masks" / "t0.tif", np.zeros((40, 40), np.uint8))
    with pytest.raises(DataError, match=r"t0.tif: image is 48x40 \(WxH\) but its mask .*masks/t0.tif is 40x40"):
        LabelledTiles(find_pairs(root), "samples")


def test_wrong_band_count_across_tiles(make_labelled):
    root = make_labelled(2, bands=3)
    write_geotiff(root / "images" / "t1.tif", np.zeros((4, 40, 48), np.uint8))
    with pytest.raises(DataError, match=r"t1.tif: has 4 band\(s\), expected 3"):
        LabelledTiles(find_pairs(root), "samples")


def test_all_nodata_tile(make_labelled):
    root = make_labelled(1)
    write_geotiff(root / "images" / "t0.tif", np.zeros((3, 40, 48), np.uint8), nodata=0)
    with pytest.raises(DataError, match="every pixel is nodata"):
        LabelledTiles(find_pairs(root), "samples", stats=None)


def test_unknown_colour_in_rgb_mask_names_file(tmp_path):
    root = tmp_path / "d"
    write_png(root / "images" / "a.png", np.zeros((8, 8, 3), np.uint8))
    m = np.zeros((8, 8, 3), np.uint8)
    m[:] = (60, 16, 152)
    m[0, 0] = (12, 34, 56)
    write_png(root / "labels" / "a.png", m)
    with pytest.raises(DataError, match=r"labels/a.png: 1 colour\(s\) not in label scheme 'dubai': RGB\(12, 34, 56\): 1 px"):
        LabelledTiles(find_pairs(root), DUBAI)


def test_find_pairs_reports_missing_masks_and_empty_folders(tmp_path, make_labelled):
    root = make_labelled(3)
    (root / "masks" / "t2.tif").unlink()
    with pytest.raises(DataError, match=r"no mask for 1 image\(s\): .*t2.tif"):
        find_pairs(root)
    assert [p.mask is None for p in find_pairs(root, require_masks=False)] == [False, False, True]
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    with pytest.raises(DataError, match="no tiles found"):
        find_pairs(tmp_path / "empty")
    with pytest.raises(DataError, match="no mask folder"):
        find_pairs(_only_images(tmp_path))


def _only_images(tmp_path):
    d = tmp_path / "only"
    write_geotiff(d / "images" / "x.tif", np.zeros((1, 4, 4), np.uint8))
    return d


def _pairs(groups):
    return [Pair(image=f"{g}/{i}.tif", mask=None, group=g, id=f"{g}/{i}") for g in groups for i in range(3)]


def test_split_by_group_never_splits_a_scene():
    pairs = _pairs(["Tile_1", "Tile_2", "Tile_3", "Tile_4", "Tile_5"])
    for seed in range(5):
        train, val = split_by_group(pairs, val_fraction=0.4, seed=seed)
        assert {p.group for p in train}.isdisjoint({p.group for p in val})
        assert len({p.group for p in val}) == 2 and len(train) + len(val) == len(pairs)
    train, val = split_by_group(pairs, val_groups=["Tile_4"])
    assert {p.group for p in val} == {"Tile_4"}
    with pytest.raises(DataError, match="Tile_9"):
        split_by_group(pairs, val_groups=["Tile_9"])


def test_split_test_keeps_whole_scenes_out_and_spares_the_named_ones():
    groups = [f"scene_{i:02d}" for i in range(10)]
    pairs = _pairs(groups)
    rest, test = split_test(pairs, 0.2, seed=0)
    held = {p.group for p in test}
    assert len(held) == 2 and held.isdisjoint({p.group for p in rest}) and len(rest) + len(test) == 30
    assert split_test(pairs, 0.2, seed=0) == (rest, test)  # seeded
    assert any({p.group for p in split_test(pairs, 0.2, seed=s)[1]} != held for s in range(1, 6))
    spared = sorted(held)[:1]
    assert not set(spared) & {p.group for p in split_test(pairs, 0.2, seed=0, keep=spared)[1]}
    assert split_test(pairs, 0.0) == (pairs, [])
    with pytest.raises(DataError, match=r"test_fraction=0.5 keeps 2 of 3 scene\(s\)"):
        split_test(_pairs(["a", "b", "c"]), 0.5)


def test_label_budget_counts_scenes_and_nests():
    pairs = _pairs(list("abcdef"))
    one, two, four = (label_budget(pairs, k, seed=1) for k in (1, 2, 4))
    assert [len({p.group for p in s}) for s in (one, two, four)] == [1, 2, 4]
    assert {p.group for p in one} <= {p.group for p in two} <= {p.group for p in four}
    assert len(label_budget(pairs, 0.5)) == 9
    with pytest.raises(DataError, match="only 6 available"):
        label_budget(pairs, 7)
    with pytest.raises(DataError, match="outside"):
        label_budget(pairs, 1.5)


def test_unlabelled_pool_crops_small_tiles_and_is_deterministic(tmp_path):
    rng = np.random.default_rng(0)
    for i, size in enumerate([(80, 90), (30, 20)]):
        write_geotiff(tmp_path / "pool" / f"p{i}.tif", rng.integers(0, 255, (4, *size)).astype(np.uint8))
    pool = UnlabelledPool(tmp_path / "pool", crop_size=48, samples_per_epoch=6, seed=1)
    assert len(pool) == 6
    items = [pool[i]["image"] for i in range(6)]
    assert all(x.shape == (4, 48, 48) for x in items)
    assert torch.equal(pool[3]["image"], items[3])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no tiles found"):
        UnlabelledPool(tmp_path / "empty")


def test_embedded_samples_load(samples_dir):
    pairs = find_pairs(samples_dir / "labelled")
    ds = LabelledTiles(pairs, "samples", crop_size=64, augment=True)
    assert len(pairs) >= 8 and ds.stats.bands == 4
    counts = ds.class_pixel_counts()
    assert (counts > 0).all(), "every class appears in the labelled samples"
    pool = UnlabelledPool(samples_dir / "unlabelled", crop_size=64, stats=ds.stats)
    assert len(pool) >= 64


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


def test_photometric_jitter_is_a_per_band_gain_and_offset_of_the_same_crop(make_labelled):
    """With ``photometric=s`` each training item is ``a * x + b`` per band of the crop an unjittered
    dataset gives (same mask), with ``a`` in [1-s, 1+s] and ``b`` in [-s, s]; evaluation items and
    ``s = 0`` are untouched."""
    root = make_labelled(2, size=(40, 48))
    pairs = find_pairs(root)
    plain = LabelledTiles(pairs, "samples", crop_size=24, augment=True, samples_per_epoch=6, seed=3)
    jit = LabelledTiles(pairs, "samples", crop_size=24, augment=True, samples_per_epoch=6, seed=3, photometric=0.3)
    gains = []
    for i in range(6):
        x, y = plain[i]["image"].double(), jit[i]["image"].double()
        assert torch.equal(plain[i]["mask"], jit[i]["mask"])
        for band in range(3):
            xb, yb = x[band].flatten(), y[band].flatten()
            a = ((xb - xb.mean()) * (yb - yb.mean())).sum() / ((xb - xb.mean()) ** 2).sum()
            b = yb.mean() - a * xb.mean()
            torch.testing.assert_close(yb, a * xb + b, atol=1e-5, rtol=0)
            assert 0.7 <= a <= 1.3 and -0.3 <= b <= 0.3
            gains.append(float(a))
    assert np.std(gains) > 0.05  # drawn per band and per item, not one constant
    whole = LabelledTiles(pairs, "samples", photometric=0.3)
    assert torch.equal(whole[0]["image"], LabelledTiles(pairs, "samples")[0]["image"])


@pytest.mark.parametrize("crop,photometric,with_features", [(32, 0.0, False), (56, 0.3, False), (56, 0.0, True),
                                                              (32, 0.3, True)])
def test_compact_items_finish_to_the_float_items_bit_for_bit(make_labelled, crop, photometric, with_features):
    """``compact_images``: workers hand out 8-bit crops, and :meth:`LabelledTiles.finish` (on the
    batch's device) must give exactly the float path's batch: normalisation, padding of tiles
    smaller than the crop (56 > 40x48), photometric jitter, cached features cast to float32."""
    from torch.utils.data import default_collate

    root = make_labelled(3, size=(40, 48))
    kw = dict(crop_size=crop, augment=True, samples_per_epoch=12, seed=5, compact_masks=True, photometric=photometric)
    ref = LabelledTiles(find_pairs(root), "samples", **kw)
    compact = LabelledTiles(find_pairs(root), "samples", stats=ref.stats, compact_images=True, **kw)
    assert compact.compact and compact.images.raw[0].dtype == np.uint8
    if with_features:
        feats = [[torch.randn(4, 40 // 4, 48 // 4).half(), torch.randn(2, 40 // 2, 48 // 2).half()] for _ in range(3)]
        for ds in (ref, compact):
            ds.attach_features(feats, [4, 2])
    want = default_collate([ref[i] for i in range(12)])
    sent = default_collate([compact[i] for i in range(12)])
    assert sent["image"].dtype == torch.uint8 and sent["image"].nbytes * 4 == want["image"].nbytes
    got = compact.finish(sent)
    assert set(got) == set(want)
    assert torch.equal(got["image"], want["image"]) and torch.equal(got["mask"], want["mask"])
    if crop == 56:  # the equality above then covers padded pixels too
        assert (want["mask"] == 255).any()
    if with_features:
        assert sent["streams"][0].dtype == torch.float16
        assert all(torch.equal(a, b) and a.dtype == torch.float32 for a, b in zip(got["streams"], want["streams"]))
    assert np.array_equal(compact.images[1], ref.images[1])  # whole tiles (feature cache, validation) alike


def test_padding_masks_trace_every_turn_and_flip_back_to_the_padded_corner():
    """Against the numpy transform itself: an indicator of the tile's pixels, padded at the bottom
    and right, turned and flipped as :func:`random_crop_d4` does, for every (k, flip)."""
    from diffhrnet_lab.data.datasets import padding_masks

    size, rows, cols = 9, 6, 4
    geometry, expected = [], []
    for k in range(4):
        for flip in (0, 1):
            a = np.zeros((size, size), bool)
            a[:rows, :cols] = True
            a = np.rot90(a, k)
            expected.append(a[:, ::-1] if flip else a)
            geometry.append([rows, cols, k, flip])
    got = padding_masks(torch.tensor(geometry, dtype=torch.int32), size)
    assert torch.equal(got, torch.from_numpy(np.stack(expected).copy()))
    assert len({g.numpy().tobytes() for g in got}) == 8  # the eight transforms are told apart


def test_compact_images_fall_back_to_the_float_path_for_16_bit_tiles(make_labelled):
    root = make_labelled(2, size=(40, 48), dtype=np.uint16)
    ds = LabelledTiles(find_pairs(root), "samples", crop_size=32, augment=True, compact_images=True)
    assert not ds.compact and ds[0]["image"].dtype == torch.float32
    batch = {"image": ds[0]["image"][None]}
    assert ds.finish(batch) is batch


@pytest.mark.parametrize("crop,photometric,compact_masks", [(32, 0.0, True), (56, 0.3, False), (24, 0.2, True)])
def test_whole_batches_equal_the_items_collated(make_labelled, crop, photometric, compact_masks):
    """``__getitems__`` writes the crops straight into one batch tensor; it must give exactly the
    collated items (padding of tiles smaller than the crop, 56 > 40x48; jitter; mask dtype), and a
    worker's batch must come to the main process as the same values, in shared memory."""
    from torch.utils.data import DataLoader, default_collate

    from diffhrnet_lab.data.datasets import collate_batch

    root = make_labelled(3, size=(40, 48))
    ds = LabelledTiles(find_pairs(root), "samples", crop_size=crop, augment=True, samples_per_epoch=12, seed=3,
                       compact_masks=compact_masks, photometric=photometric)
    indices = [7, 0, 25, 3]  # 25: a global sample number, two epochs on
    want = default_collate([ds[i] for i in indices])
    got = collate_batch(ds.__getitems__(indices))
    assert got["id"] == want["id"] and got["mask"].dtype == want["mask"].dtype
    assert torch.equal(got["image"], want["image"]) and torch.equal(got["mask"], want["mask"])
    if crop == 56:
        assert (got["mask"] == 255).any()  # the equality above then covers padded pixels too
    worker = next(iter(DataLoader(ds, batch_sampler=[indices], num_workers=1, collate_fn=collate_batch)))
    assert worker["image"].is_shared() and torch.equal(worker["image"], want["image"])
    assert torch.equal(worker["mask"], want["mask"])
    plain = next(iter(DataLoader(ds, batch_sampler=[indices])))  # a user's own loader, default collation
    assert torch.equal(plain["image"], want["image"]) and plain["id"] == want["id"]
