"""The real Dubai aerial tiles through the same loaders (skipped when DHL_DUBAI_DIR is absent)."""

import numpy as np

from diffhrnet_lab.data.datasets import LabelledTiles, find_pairs, label_budget, split_by_group
from diffhrnet_lab.data.io import read_mask, read_tile
from diffhrnet_lab.data.labels import DUBAI


def test_every_dubai_mask_decodes_with_no_unknown_colour(dubai):
    pairs = find_pairs(dubai)
    assert len(pairs) == 36 and {p.group for p in pairs} == {"Tile_1", "Tile_2", "Tile_3", "Tile_4"}
    counts = np.zeros(DUBAI.num_classes + 1, np.int64)
    for p in pairs:
        m = read_mask(p.mask, DUBAI)  # raises, naming file and colours, on any unknown colour
        img = read_tile(p.image, expected_bands=3)
        assert m.shape == img.shape, p
        counts[:-1] += np.bincount(m[m != 255].ravel(), minlength=DUBAI.num_classes)
        counts[-1] += (m == 255).sum()
    assert (counts[:-1] > 0).all()
    land = counts[1] / counts[:-1].sum()
    assert 0.35 < land < 0.6  # README: Land covers about half of all pixels


def test_dubai_split_by_tile_and_dataset(dubai):
    pairs = find_pairs(dubai)
    train, val = split_by_group(pairs, val_groups=["Tile_4"])
    assert len(val) == 9 and all(p.group != "Tile_4" for p in train)
    budget = label_budget(train, 1, seed=0)
    assert len({p.group for p in budget}) == 1 and len(budget) == 9
    ds = LabelledTiles(budget[:2], DUBAI, crop_size=256, augment=True)
    item = ds[0]
    assert item["image"].shape == (3, 256, 256) and item["mask"].max() <= 255
