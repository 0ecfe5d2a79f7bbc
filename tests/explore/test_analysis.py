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


class _TwoStreams:
    """A stand-in extractor: stream (50, 0) is the class one-hot (perfectly separable), stream
    (500, 0) is noise; both at the image's resolution."""

    keys = [(50, 0), (500, 0)]

    def __call__(self, images: torch.Tensor) -> dict:
        onehot = torch.nn.functional.one_hot(images[:, 0].long(), 3).permute(0, 3, 1, 2).float()
        noise = torch.randn(onehot.shape, generator=torch.Generator().manual_seed(int(images.sum())))
        return {(50, 0): onehot, (500, 0): noise}


def _items(n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        mask = torch.randint(0, 3, (16, 16), generator=g)
        out.append({"image": mask[None].float(), "mask": mask})
    return out


def test_linear_probe_scores_the_separable_stream_perfectly_and_returns_per_class_scores_on_request():
    from diffhrnet_lab.explore.analysis import linear_probe

    train, val = _items(3, 0), _items(2, 1)
    miou = linear_probe(_TwoStreams(), train, val, num_classes=3, pixels_per_tile=200, epochs=100)
    assert set(miou) == {(50, 0), (500, 0)} and isinstance(miou[(50, 0)], float)
    assert miou[(50, 0)] == 1.0 and miou[(500, 0)] < 0.6
    full = linear_probe(_TwoStreams(), train, val, num_classes=3, pixels_per_tile=200, epochs=100, per_class=True,
                        classes=["road", "roof", "tree"])
    assert full[(50, 0)].classes == ["road", "roof", "tree"] and full[(50, 0)].iou == [1.0, 1.0, 1.0]
    assert full[(500, 0)].miou == miou[(500, 0)] and len(full[(500, 0)].iou) == 3
