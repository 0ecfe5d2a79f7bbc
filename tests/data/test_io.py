import numpy as np
import pytest
import rasterio
from affine import Affine

from diffhrnet_lab.data.io import (BandStats, compute_band_stats, list_tiles, read_mask, read_mask_raw,
                                   read_tile, write_geotiff, write_png)
from diffhrnet_lab.data.labels import DUBAI, SAMPLES
from diffhrnet_lab.errors import DataError


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("bands", [1, 3, 5])
def test_geotiff_round_trip_keeps_dtype_bands_and_georeferencing(tmp_path, dtype, bands):
    rng = np.random.default_rng(bands)
    arr = (rng.random((bands, 21, 34)) * 1000).astype(dtype)
    tf = Affine.translation(500_000, 4_000_000) @ Affine.scale(0.25, -0.25)
    p = write_geotiff(tmp_path / "a.tif", arr, crs="EPSG:2180", transform=tf)
    t = read_tile(p)
    assert t.image.dtype == dtype and t.bands == bands and t.shape == (21, 34)
    np.testing.assert_array_equal(t.image, arr)
    assert t.crs.to_epsg() == 2180 and t.transform == tf and t.georeferenced


def test_png_and_jpeg_read_without_georeferencing(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3)).astype(np.uint8)
    png = write_png(tmp_path / "a.png", rgb)
    t = read_tile(png)
    np.testing.assert_array_equal(t.image, np.moveaxis(rgb, -1, 0))
    assert t.crs is None and t.transform is None and not t.georeferenced
    with rasterio.open(tmp_path / "b.jpg", "w", driver="JPEG", count=3, height=20, width=30, dtype="uint8") as dst:
        dst.write(np.moveaxis(rgb, -1, 0))
    j = read_tile(tmp_path / "b.jpg")
    assert j.image.shape == (3, 20, 30) and np.abs(j.image.astype(int) - np.moveaxis(rgb, -1, 0)).mean() < 60


def test_band_selection_and_band_count_check(tmp_path):
    arr = np.arange(4 * 6 * 6, dtype=np.uint16).reshape(4, 6, 6)
    p = write_geotiff(tmp_path / "a.tif", arr)
    np.testing.assert_array_equal(read_tile(p, bands=[4, 1]).image, arr[[3, 0]])
    with pytest.raises(DataError, match=r"a.tif: has 4 band\(s\), expected 3"):
        read_tile(p, expected_bands=3)
    with pytest.raises(DataError, match=r"band\(s\) \[5\]"):
        read_tile(p, bands=[5])


def test_truncated_and_non_raster_files_name_the_file(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (3, 256, 256)).astype(np.uint8)
    p = write_geotiff(tmp_path / "whole.tif", arr, compress="none")
    data = p.read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match="cut.tif: cannot read tile"):
        read_tile(tmp_path / "cut.tif")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(DataError, match="notes.png"):
        read_tile(tmp_path / "notes.png")
    with pytest.raises(DataError, match="missing.tif: file not found"):
        read_tile(tmp_path / "missing.tif")


def test_palette_png_masks_are_matched_by_colour(tmp_path):
    """Dubai Tile_2/Tile_4 masks are 'P' PNGs: slot numbers mean nothing, colours do."""
    idx = np.array([[0, 1], [2, 3]], np.uint8)
    cmap = {0: (110, 193, 228, 255), 1: (60, 16, 152, 255), 2: (155, 155, 155, 255), 3: (254, 221, 58, 255)}
    with rasterio.open(tmp_path / "m.png", "w", driver="PNG", count=1, height=2, width=2, dtype="uint8") as dst:
        dst.write(idx[None])
        dst.write_colormap(1, cmap)
    assert read_mask_raw(tmp_path / "m.png").shape == (3, 2, 2)
    assert read_mask(tmp_path / "m.png", DUBAI).tolist() == [[2, 0], [255, 3]]


def test_index_mask_with_colour_table_keeps_values(tmp_path):
    m = np.array([[0, 6], [3, 1]], np.uint8)
    write_geotiff(tmp_path / "m.tif", m, colormap={i: c for i, c in enumerate(SAMPLES.colors)})
    assert read_mask(tmp_path / "m.tif", SAMPLES).tolist() == m.tolist()


def test_band_stats_uint8_full_range_and_uint16_percentiles(tmp_path):
    rng = np.random.default_rng(0)
    a = write_geotiff(tmp_path / "a.tif", rng.integers(10, 50, (2, 30, 30)).astype(np.uint8))
    s = compute_band_stats([a])
    assert s.low == [0.0, 0.0] and s.high == [255.0, 255.0]
    x = s.normalise(np.full((2, 1, 1), 255, np.uint8))
    assert np.allclose(x, 1.0)
    u16 = rng.normal(3000, 300, (3, 64, 64)).clip(0, 65535).astype(np.uint16)
    b = write_geotiff(tmp_path / "b.tif", u16)
    s16 = compute_band_stats([b])
    assert 1800 < s16.low[0] < 2500 and 3500 < s16.high[0] < 4200
    n = s16.normalise(u16)
    assert n.dtype == np.float32 and n.min() >= -1 and n.max() <= 1 and abs(float(n.mean())) < 0.1
    inside = u16[:, (u16 > s16.low[0] + 50).all(0) & (u16 < s16.high[0] - 50).all(0)]  # pixels not clipped in any band
    assert inside.size > 100
    np.testing.assert_allclose(s16.denormalise(s16.normalise(inside[:, None, :]))[:, 0], inside, rtol=1e-4)
    assert BandStats.from_dict(s16.to_dict()) == s16


def test_band_stats_reject_mixed_dtypes_and_constant_bands(tmp_path):
    a = write_geotiff(tmp_path / "a.tif", np.zeros((1, 8, 8), np.uint8) + 3)
    b = write_geotiff(tmp_path / "b.tif", np.zeros((1, 8, 8), np.uint16) + 3)
    with pytest.raises(DataError, match="b.tif: dtype uint16 differs"):
        compute_band_stats([a, b])
    with pytest.raises(DataError, match="constant"):
        compute_band_stats([b])
    with pytest.raises(DataError, match="has 3 band"):
        BandStats([0.0], [1.0]).normalise(np.zeros((3, 2, 2)), "t.tif")


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(DataError, match="no tiles found"):
        list_tiles(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        list_tiles(tmp_path / "nope")


def test_write_is_atomic_on_failure(tmp_path):
    """A failing write leaves neither the target nor a temporary file."""
    target = tmp_path / "out.tif"
    with pytest.raises(Exception):
        write_geotiff(target, np.zeros((2, 4, 4), np.complex64) * np.nan, crs="NOT-A-CRS")
    assert list(tmp_path.iterdir()) == []
