"""Scoring in windows with cached features (issue 15): feature windows lie exactly under their
image windows, so a model that reads only its features gives the whole-tile answer."""

from __future__ import annotations

import torch

from diffhrnet_lab.inference.evaluate import predict_tile


class FeatureEcho(torch.nn.Module):
    """Logits = the first stream (stride 4), each feature pixel repeated over the 4 x 4 image
    pixels it lies over (the kit's convention: feature (i, j) over pixel (4i, 4j))."""

    def forward(self, x, streams=None):
        f = streams[0].float().repeat_interleave(4, -2).repeat_interleave(4, -1)
        return f[..., : x.shape[-2], : x.shape[-1]]


class ImageEcho(torch.nn.Module):
    def forward(self, x, streams=None):
        return x * 2 + 1


def test_windowed_features_land_under_their_pixels():
    torch.manual_seed(0)
    h, w, s = 203, 150, 4  # not multiples of the stride or the window
    image = torch.zeros(3, h, w)
    feat = torch.randn(5, -(-h // s), -(-w // s)).half()
    whole = predict_tile(FeatureEcho(), image, 0, [feat], [s])
    for window in (64, 96):
        windowed = predict_tile(FeatureEcho(), image, window, [feat], [s])
        assert windowed.shape == (5, h, w)
        torch.testing.assert_close(windowed, whole, rtol=0, atol=1e-6)


def test_windowed_image_only_scoring_equals_whole_tile_for_a_pointwise_model():
    image = torch.randn(3, 130, 77)
    torch.testing.assert_close(predict_tile(ImageEcho(), image, 64), image * 2 + 1, rtol=0, atol=1e-5)
