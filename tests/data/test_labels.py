import numpy as np
import pytest

from diffhrnet_lab.data.labels import DUBAI, ISPRS, LANDCOVER_AI, LOVEDA, SAMPLES, SCHEMES, get_scheme
from diffhrnet_lab.errors import ConfigError, DataError


@pytest.mark.parametrize("scheme", list(SCHEMES.values()), ids=list(SCHEMES))
def test_round_trip_every_scheme(scheme):
    rng = np.random.default_rng(0)
    idx = rng.integers(0, scheme.num_classes, size=(17, 23))
    has_ignore = bool(scheme.ignore_values or scheme.ignore_colors)
    if has_ignore:
        idx[0, :5] = scheme.ignore_index
    stored = scheme.to_stored(idx)
    back = scheme.encode(stored, "x")
    np.testing.assert_array_equal(back, idx)
    colours = scheme.decode(idx)
    assert colours.shape == (17, 23, 3) and colours.dtype == np.uint8
    np.testing.assert_array_equal(colours[3, 4], scheme.colors[idx[3, 4]])


def test_rgb_encoding_channel_first_and_last_agree():
    idx = np.array([[0, 1, 2, 3, 4], [255, 0, 1, 2, 3], [4, 4, 4, 0, 0], [1, 1, 1, 1, 1], [2, 2, 2, 2, 2]])
    hwc = DUBAI.decode(idx)
    np.testing.assert_array_equal(DUBAI.encode(hwc), DUBAI.encode(np.moveaxis(hwc, -1, 0)))


def test_dubai_ignores_unlabeled_grey_and_black():
    m = np.zeros((2, 2, 3), np.uint8)
    m[0, 0] = (155, 155, 155)
    m[0, 1] = (60, 16, 152)
    m[1, 0] = (110, 193, 228)
    out = DUBAI.encode(m)
    assert out.tolist() == [[255, 0], [2, 255]]


def test_unknown_colours_listed_with_counts_and_file():
    m = np.zeros((6, 5, 3), np.uint8)
    m[:] = (60, 16, 152)
    m[0, :3] = (1, 2, 3)
    m[1, 0] = (9, 9, 9)
    with pytest.raises(DataError) as e:
        DUBAI.encode(m, source="tile_7.png")
    msg = str(e.value)
    assert "tile_7.png" in msg and "RGB(1, 2, 3): 3 px" in msg and "RGB(9, 9, 9): 1 px" in msg
    assert msg.index("(1, 2, 3)") < msg.index("(9, 9, 9)")  # most frequent first


def test_isprs_palette_and_eroded_boundary():
    m = np.array([[[255, 255, 255], [0, 0, 255]], [[255, 255, 0], [0, 0, 0]]], np.uint8)
    assert ISPRS.encode(m).tolist() == [[0, 1], [4, 255]]


def test_loveda_zero_is_ignore_and_shifted():
    stored = np.array([[0, 1, 7], [2, 3, 4]])
    assert LOVEDA.encode(stored).tolist() == [[255, 0, 6], [1, 2, 3]]
    with pytest.raises(DataError, match="value 8: 1 px"):
        LOVEDA.encode(np.array([[8, 1]]), "m.png")


def test_landcover_ai_indices():
    assert LANDCOVER_AI.classes == ("background", "building", "woodland", "water", "road")
    assert LANDCOVER_AI.encode(np.array([[0, 4], [2, 3]], np.uint8)).tolist() == [[0, 4], [2, 3]]


def test_index_mask_with_wrong_shape():
    with pytest.raises(DataError, match="single-band"):
        SAMPLES.encode(np.zeros((3, 4, 4), np.uint8), "m.tif")


def test_unknown_scheme_lists_known():
    with pytest.raises(ConfigError, match="dubai"):
        get_scheme("vaihingen2")
