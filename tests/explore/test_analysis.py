"""What notebooks use to look at features: k-means and PCA colours, on features with a known answer."""

import numpy as np
import torch

from diffhrnet_lab.explore.analysis import kmeans, pca_rgb
from diffhrnet_lab.explore.viz import to_rgb


def _two_region_features() -> tuple[torch.Tensor, np.ndarray]:
    """8 channels over 6x10 pixels: the left 4 columns point one way, the rest another (plus noise)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, generator=g), torch.randn(8, generator=g)
    region = np.zeros((6, 10), int)
    region[:, 4:] = 1
    feat = torch.where(torch.from_numpy(region)[None] == 0, a[:, None, None], b[:, None, None])
    return feat + 0.01 * torch.randn(8, 6, 10, generator=g), region


def test_kmeans_finds_the_two_regions():
    feat, region = _two_region_features()
    labels = kmeans(feat, k=2, seed=0)
    assert labels.shape == (6, 10)
    assert len(set(labels[region == 0])) == 1 and len(set(labels[region == 1])) == 1
    assert labels[0, 0] != labels[0, 9]


def test_pca_colours_separate_the_regions_and_a_shared_basis_is_reused():
    feat, region = _two_region_features()
    rgb, basis = pca_rgb(feat)
    assert rgb.shape == (6, 10, 3) and basis.shape == (8, 3)
    first = rgb[..., 0]  # the first component is the region: 0 on one side, 1 on the other
    assert {round(float(first[region == 0].mean())), round(float(first[region == 1].mean()))} == {0, 1}
    again, same = pca_rgb(feat, basis)
    assert same is basis and np.allclose(again, rgb)


def test_to_rgb_maps_normalised_and_stored_pixels_to_unit_range():
    norm = np.array([[[-1.0, 0.0]], [[1.0, 0.5]], [[0.0, -0.5]]], np.float32)  # (3, 1, 2)
    np.testing.assert_allclose(to_rgb(norm), [[[0.0, 1.0, 0.5], [0.5, 0.75, 0.25]]])
    stored = np.array([[[0, 255]], [[51, 102]], [[255, 0]], [[9, 9]]], np.uint8)  # 4 bands: first three shown
    np.testing.assert_allclose(to_rgb(stored), [[[0.0, 0.2, 1.0], [1.0, 0.4, 0.0]]], atol=1e-6)
    grey = to_rgb(np.array([[[0, 255]]], np.uint8))
    np.testing.assert_allclose(grey, [[[0, 0, 0], [1, 1, 1]]])
