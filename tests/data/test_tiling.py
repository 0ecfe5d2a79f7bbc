"""Tiling geometry: window starts, blend weights, padding to a stride."""

import numpy as np
import pytest
import torch

from diffhrnet_lab.data.tiling import blend_weights, pad_to, window_starts


@pytest.mark.parametrize("length,window,stride", [(100, 32, 24), (32, 32, 8), (20, 32, 8), (257, 64, 48)])
def test_windows_cover_every_pixel_and_stay_inside(length, window, stride):
    starts = window_starts(length, window, stride)
    covered = np.zeros(max(length, window), bool)
    for s in starts:
        covered[s:s + window] = True
        assert s >= 0 and (s + window <= length or length <= window)
    assert covered[:length].all()


def test_window_starts_known_answers():
    assert window_starts(100, 32, 24) == [0, 24, 48, 68]  # the last window is flush with the end
    assert window_starts(96, 32, 32) == [0, 32, 64]  # exact fit: no extra window
    assert window_starts(20, 32, 8) == [0] and window_starts(32, 32, 8) == [0]


def test_blend_weights_are_the_outer_product_of_triangular_ramps_floored():
    ramp4 = torch.tensor([0.25, 0.75, 0.75, 0.25])  # 1 - |r - 1.5| / 2
    torch.testing.assert_close(blend_weights(4), ramp4[:, None] * ramp4[None, :])
    torch.testing.assert_close(blend_weights(4, 2), ramp4[:, None] * torch.tensor([[0.5, 0.5]]))
    w = blend_weights(200)  # the border would be 1/200 = 0.005: raised to the floor
    assert w[0, 100].item() == pytest.approx(0.01 * (1 - 0.5 / 100)) and w.min().item() == pytest.approx(1e-4)
    assert w.max().item() == pytest.approx((1 - 0.5 / 100) ** 2)


def test_pad_to_pads_bottom_right_to_the_multiple_by_reflection():
    x = torch.arange(12.0).reshape(1, 3, 4)  # rows [0..3], [4..7], [8..11]
    y, h, w = pad_to(x, 4)
    assert (h, w) == (3, 4) and y.shape == (1, 4, 4)
    torch.testing.assert_close(y[:, :3], x)  # the original sits top-left, untouched
    torch.testing.assert_close(y[0, 3], x[0, 1])  # reflection: the row after the last mirrors row 1
    y, _, _ = pad_to(torch.arange(15.0).reshape(3, 5)[None], 4)
    assert y.shape == (1, 4, 8)
    assert y[0, 0].tolist() == [0, 1, 2, 3, 4, 3, 2, 1] and y[0, 3].tolist() == y[0, 1].tolist()


def test_pad_to_replicates_when_the_padding_is_as_large_as_the_image():
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # 2x2 to a multiple of 4: padding 2 >= size 2
    y, h, w = pad_to(x, 4)
    assert (h, w) == (2, 2)
    assert y[0].tolist() == [[1, 2, 2, 2], [3, 4, 4, 4], [3, 4, 4, 4], [3, 4, 4, 4]]
    y, _, _ = pad_to(torch.arange(10.0).reshape(2, 5)[None], 4)  # one side too small: both replicate
    assert y[0, 0].tolist() == [0, 1, 2, 3, 4, 4, 4, 4] and y[0, 3].tolist() == [5, 6, 7, 8, 9, 9, 9, 9]


def test_pad_to_min_size_and_no_op_and_batched_input():
    x = torch.randn(2, 3, 8, 8)
    y, h, w = pad_to(x, 4)
    assert y is x and (h, w) == (8, 8)  # already a multiple: returned as is
    y, h, w = pad_to(x, 4, min_size=12)
    assert y.shape == (2, 3, 12, 12) and (h, w) == (8, 8)
    torch.testing.assert_close(y[..., 8:, :8], x.flip(-2)[..., 1:5, :])  # rows 9..12 mirror rows 6..3
    y, _, _ = pad_to(torch.randn(1, 5, 7), 1, min_size=6)
    assert y.shape == (1, 6, 7)
