"""Sliding-window inference: windows stitched back exactly, no seams, georeferenced masks."""

import numpy as np
import pytest
import torch
from affine import Affine

from diffhrnet_lab.data.io import Tile, read_tile
from diffhrnet_lab.data.labels import SAMPLES
from diffhrnet_lab.inference.sliding import predict_sliding, write_prediction


@pytest.mark.parametrize("shape", [(3, 150, 97), (3, 40, 30), (2, 64, 64)])
def test_stitching_reproduces_a_pointwise_function_exactly(shape):
    """A pixel-wise function must come back unchanged through windows, blending and stitching."""
    img = torch.randn(shape)
    fn = lambda b: torch.cat([b * 2 + 1, b.sum(1, keepdim=True)], 1)  # noqa: E731
    out = predict_sliding(fn, img, window=64, overlap=0.3, batch_size=3)
    assert out.shape == (shape[0] + 1, *shape[1:])
    torch.testing.assert_close(out, torch.cat([img * 2 + 1, img.sum(0, keepdim=True)]), atol=1e-5, rtol=1e-5)


def test_context_dependent_function_has_no_seams():
    """Blending weights favour window centres: a border-sensitive output is smoothed, not stepped."""
    img = torch.zeros(1, 128, 128)

    def fn(b):  # output 1 near window borders, 0 in the middle
        out = torch.zeros(b.shape[0], 1, *b.shape[-2:])
        out[..., :8, :] = out[..., -8:, :] = 1
        return out

    out = predict_sliding(fn, img, window=64, overlap=0.5)[0]
    # Rows 56..63 are the border of window 0 and the centre of window 32: a plain average gives 0.5.
    assert out[56:64, 40:88].mean() < 0.2
    assert out[0].min() == 1  # the image border is seen by one window only


def test_prediction_geotiff_keeps_crs_and_transform(tmp_path):
    tf = Affine.translation(300_000, 2_800_000) @ Affine.scale(0.5, -0.5)
    like = Tile(image=np.zeros((3, 20, 30), np.uint8), crs="EPSG:32640", transform=tf)
    idx = np.random.default_rng(0).integers(0, 7, (20, 30))
    write_prediction(idx, SAMPLES, like, tmp_path / "pred.tif", tmp_path / "pred.png")
    t = read_tile(tmp_path / "pred.tif")
    assert t.crs.to_epsg() == 32640 and t.transform == tf
    np.testing.assert_array_equal(t.image[0], idx)
    png = read_tile(tmp_path / "pred.png").image
    np.testing.assert_array_equal(np.moveaxis(png, 0, -1), SAMPLES.decode(idx))
