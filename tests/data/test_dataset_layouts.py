"""Datasets as users download them (data.layouts): a tiny copy of each release and converted form."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffhrnet_lab.cli import main
from diffhrnet_lab.config import profile_config, replace
from diffhrnet_lab.data.datasets import LabelledTiles, label_budget
from diffhrnet_lab.data.io import read_mask, write_geotiff
from diffhrnet_lab.data.labels import ISPRS, DUBAI
from diffhrnet_lab.data.layouts import LAYOUTS, resolve_dataset, train_val_pairs
from diffhrnet_lab.errors import ConfigError, DataError

S = 16


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def _jpg(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (S, S, 3)).astype(np.uint8)).save(path, quality=95)


def _image_png(path: Path, seed: int = 0) -> None:
    _png(path, np.random.default_rng(seed).integers(0, 255, (S, S, 3)))


def _tif(path: Path, array: np.ndarray) -> None:
    write_geotiff(path, array if array.ndim == 2 else np.moveaxis(array, -1, 0))


def _index_mask(values, seed=0) -> np.ndarray:
    """Every value of ``values`` present, in stripes (so each is counted), then shuffled rows."""
    m = np.array(values, dtype=np.uint8)[np.arange(S * S) % len(values)].reshape(S, S)
    return m[np.random.default_rng(seed).permutation(S)]


def _rgb_mask(colours, seed=0) -> np.ndarray:
    idx = _index_mask(list(range(len(colours))), seed)
    return np.array(colours, dtype=np.uint8)[idx]


# -- ISPRS --------------------------------------------------------------------------------------
def test_potsdam_mmseg_index_masks_pair_split_and_ignore(tmp_path):
    # The failure: index masks of mmseg's converter read with the RGB 'isprs' scheme.
    for split, tile, x in (("train", "2_10", 0), ("train", "2_10", 16), ("train", "7_7", 0), ("val", "2_13", 0)):
        name = f"{tile}_{x}_0_{x + S}_{S}.png"
        _image_png(tmp_path / "img_dir" / split / name)
        _png(tmp_path / "ann_dir" / split / name, _index_mask([0, 1, 2, 3, 4, 5, 6]))
    rd = resolve_dataset(tmp_path, "isprs_potsdam")
    assert rd.form == "mmseg" and rd.scheme.name == "isprs_mmseg" and rd.scheme.classes == ISPRS.classes
    assert len(rd.labelled) == 4 and {p.group for p in rd.pairs} == {"2_10", "7_7", "2_13"}
    assert [p.group for p in rd.split("val")] == ["2_13"] and len(rd.split("train")) == 3
    stored = _index_mask([0, 1, 2, 3, 4, 5, 6])
    enc = read_mask(rd.pairs[0].mask, rd.scheme)
    assert np.array_equal(enc[stored == 0], np.full((stored == 0).sum(), 255))  # 0 = boundary: ignored
    assert np.array_equal(enc[stored > 0], stored[stored > 0] - 1)  # 1..6 → 0..5 (reduce_zero_label)
    counts = LabelledTiles(rd.labelled, rd.scheme).class_pixel_counts()
    assert counts.tolist() == [4 * int((stored == v).sum()) for v in range(1, 7)]


def test_potsdam_release_pairs_rgb_and_label_names_with_official_split(tmp_path):
    for tile in ("2_10", "7_7", "2_13"):
        _tif(tmp_path / "2_Ortho_RGB" / f"top_potsdam_{tile}_RGB.tif", np.full((S, S, 3), 90, np.uint8))
        _tif(tmp_path / "5_Labels_all" / f"top_potsdam_{tile}_label.tif", _rgb_mask(ISPRS.colors + ((0, 0, 0),)))
    _tif(tmp_path / "3_Ortho_IRRG" / "top_potsdam_2_10_IRRG.tif", np.full((S, S, 3), 90, np.uint8))  # not paired
    rd = resolve_dataset(tmp_path, "isprs_potsdam")
    assert rd.form == "release_RGB" and rd.scheme.name == "isprs"
    assert sorted(p.image.name for p in rd.labelled) == [f"top_potsdam_{t}_RGB.tif" for t in ("2_10", "2_13", "7_7")]
    assert all(p.mask.name == p.image.name.replace("_RGB", "_label") for p in rd.labelled)
    assert {rd.splits[p.id] for p in rd.pairs if p.group == "2_13"} == {"val"}  # the ISPRS test tiles
    assert sorted(p.group for p in rd.split("train")) == ["2_10", "7_7"]
    counts = LabelledTiles(rd.labelled, rd.scheme).class_pixel_counts()
    assert (counts > 0).all() and counts.sum() == 3 * (S * S - (_index_mask(list(range(7))) == 6).sum())


def test_vaihingen_release_and_mmseg(tmp_path):
    rel = tmp_path / "release"
    for area in ("area1", "area2"):
        _tif(rel / "top" / f"top_mosaic_09cm_{area}.tif", np.full((S, S, 3), 50, np.uint8))
    _tif(rel / "gts_for_participants" / "top_mosaic_09cm_area1.tif", _rgb_mask(ISPRS.colors))  # area2: no label
    rd = resolve_dataset(rel, "isprs_vaihingen")
    assert rd.form == "release" and len(rd.pairs) == 2 and [p.group for p in rd.labelled] == ["area1"]
    assert rd.labelled[0].mask.parent.name == "gts_for_participants"  # same file name, other folder
    assert rd.splits == {"top/top_mosaic_09cm_area1": "train", "top/top_mosaic_09cm_area2": "val"}
    mm = tmp_path / "mmseg"
    for split, area in (("train", "area1"), ("val", "area2")):
        _image_png(mm / "img_dir" / split / f"{area}_0_0_{S}_{S}.png")
        _png(mm / "ann_dir" / split / f"{area}_0_0_{S}_{S}.png", _index_mask([0, 6, 255]))
    rd = resolve_dataset(mm, "isprs_vaihingen")
    assert rd.form == "mmseg" and {p.group: rd.splits[p.id] for p in rd.pairs} == {"area1": "train", "area2": "val"}
    enc = read_mask(rd.pairs[0].mask, rd.scheme)
    assert set(np.unique(enc).tolist()) == {5, 255}  # clutter; boundary 0 and 255 ignored


# -- LoveDA ---------------------------------------------------------------------------------------
def _loveda_release(root: Path) -> None:
    for split, domain, name in (("Train", "Urban", "1366"), ("Train", "Rural", "0"), ("Train", "Rural", "1"),
                                ("Val", "Urban", "3514"), ("Test", "Rural", "5167")):
        _image_png(root / split / domain / "images_png" / f"{name}.png")
        if split != "Test":
            _png(root / split / domain / "masks_png" / f"{name}.png", _index_mask(list(range(8))))


def test_loveda_release_reads_both_domains_and_all_splits(tmp_path):
    _loveda_release(tmp_path)
    rd = resolve_dataset(tmp_path, "loveda")
    assert rd.form == "release" and len(rd.pairs) == 5 and len(rd.labelled) == 4
    assert rd.split_names() == ["train", "val", "test"]
    assert sorted(p.group for p in rd.split("train")) == ["Train/Rural/0", "Train/Rural/1", "Train/Urban/1366"]
    assert [p.group for p in rd.split("test", labelled=False)] == ["Test/Rural/5167"]
    assert rd.split("test") == []  # no masks: never used for training or validation
    enc = read_mask(rd.labelled[0].mask, rd.scheme)
    stored = _index_mask(list(range(8)))
    assert (enc[stored == 0] == 255).all() and np.array_equal(enc[stored > 0], stored[stored > 0] - 1)


def test_loveda_nested_unzip_and_mmseg_form(tmp_path):
    _loveda_release(tmp_path / "nested" / "Train")  # Train/Train/Urban/... from unzipping into Train/
    rd = resolve_dataset(tmp_path / "nested", "loveda")
    assert len(rd.labelled) == 4 and rd.labelled[0].mask.is_file()
    mm = tmp_path / "mmseg"
    for split, name in (("train", "0"), ("train", "1366"), ("val", "3514")):
        _image_png(mm / "img_dir" / split / f"{name}.png")
        _png(mm / "ann_dir" / split / f"{name}.png", _index_mask([0, 1, 7]))
    _image_png(mm / "img_dir" / "test" / "5167.png")
    rd = resolve_dataset(mm, "loveda")
    assert rd.form == "mmseg" and {p.group for p in rd.split("train")} == {"train/0", "train/1366"}
    assert len(rd.pairs) == 4 and len(rd.labelled) == 3
    assert LabelledTiles(rd.labelled, rd.scheme).class_pixel_counts()[[0, 6]].tolist() == [
        3 * int((_index_mask([0, 1, 7]) == v).sum()) for v in (1, 7)]


# -- LandCover.ai ----------------------------------------------------------------------------------
def test_landcover_ai_tiles_pair_m_suffix_and_read_split_files(tmp_path):
    for stem in ("M-33-20-D-c-4-2_0", "M-33-20-D-c-4-2_1", "N-34-106-A-b-3-4_0", "N-34-106-A-b-3-4_7"):
        _jpg(tmp_path / "output" / f"{stem}.jpg")
        _png(tmp_path / "output" / f"{stem}_m.png", _index_mask([0, 1, 2, 3, 4]))
    (tmp_path / "train.txt").write_text("M-33-20-D-c-4-2_0\nM-33-20-D-c-4-2_1\n")
    (tmp_path / "val.txt").write_text("N-34-106-A-b-3-4_0\n")
    (tmp_path / "test.txt").write_text("N-34-106-A-b-3-4_7\n")
    rd = resolve_dataset(tmp_path, "landcover_ai")
    assert rd.form == "tiles" and len(rd.pairs) == 4 and all(p.mask.name.endswith("_m.png") for p in rd.pairs)
    assert {p.group for p in rd.pairs} == {"M-33-20-D-c-4-2", "N-34-106-A-b-3-4"}  # the source orthophoto
    assert [len(rd.split(s)) for s in ("train", "val", "test")] == [2, 1, 1]
    assert LabelledTiles(rd.labelled, rd.scheme).class_pixel_counts().tolist() == [4 * S * S // 5 + 4 * (S * S % 5 > v)
                                                                                  for v in range(5)]


def test_landcover_ai_release_orthophotos_have_no_split(tmp_path):
    for stem in ("M-33-20-D-c-4-2", "N-34-106-A-b-3-4"):
        _tif(tmp_path / "images" / f"{stem}.tif", np.full((S, S, 3), 10, np.uint8))
        _tif(tmp_path / "masks" / f"{stem}.tif", _index_mask([0, 4]))
    rd = resolve_dataset(tmp_path, "landcover_ai")
    assert rd.form == "release" and len(rd.labelled) == 2 and rd.split_names() == []
    cfg = replace(profile_config("smoke").data, root=str(tmp_path), dataset="landcover_ai")
    _, train, val = train_val_pairs(cfg)  # no official split: by scene
    assert len(train) == 1 and len(val) == 1 and train[0].group != val[0].group


# -- Dubai --------------------------------------------------------------------------------------------
def test_dubai_kaggle_release_groups_by_tile(tmp_path):
    base = tmp_path / "Semantic segmentation dataset"
    for tile in (1, 2):
        for k in (1, 2):
            _jpg(base / f"Tile {tile}" / "images" / f"image_part_00{k}.jpg", seed=k)
            _png(base / f"Tile {tile}" / "masks" / f"image_part_00{k}.png", _rgb_mask(DUBAI.colors))
    rd = resolve_dataset(tmp_path, "dubai")
    assert rd.form == "release" and len(rd.labelled) == 4 and {p.group for p in rd.pairs} == {"Tile_1", "Tile_2"}
    assert LabelledTiles(rd.labelled, rd.scheme).class_pixel_counts().sum() == 4 * S * S


# -- errors, fine-tuning's split, CLI -----------------------------------------------------------------
def test_unrecognised_layout_lists_found_and_expected(tmp_path):
    _image_png(tmp_path / "pictures" / "a.png")
    with pytest.raises(DataError) as e:
        resolve_dataset(tmp_path, "loveda")
    msg = str(e.value)
    assert "not a LoveDA folder" in msg and "pictures/ (1, e.g. a.png)" in msg
    assert "Train/Urban/images_png/1366.png" in msg and "img_dir/train/0.png" in msg
    with pytest.raises(ConfigError, match="unknown dataset 'potsdam'.*isprs_potsdam"):
        resolve_dataset(tmp_path, "potsdam")


def test_images_without_any_mask_name_where_masks_were_looked_for(tmp_path):
    _jpg(tmp_path / "output" / "M-1_0.jpg")
    _png(tmp_path / "output" / "M-1_0_mask.png", _index_mask([0]))  # wrong suffix
    with pytest.raises(DataError, match=r"no mask for any; for output/M-1_0.jpg looked for output/M-1_0_m.png"):
        resolve_dataset(tmp_path, "landcover_ai")


def test_fine_tuning_uses_official_split_unless_val_groups_given(tmp_path):
    for split, tile in (("train", "2_10"), ("train", "2_11"), ("train", "3_10"), ("val", "2_13")):
        _image_png(tmp_path / "img_dir" / split / f"{tile}_0_0_{S}_{S}.png")
        _png(tmp_path / "ann_dir" / split / f"{tile}_0_0_{S}_{S}.png", _index_mask([1, 2]))
    dc = replace(profile_config("smoke").data, root=str(tmp_path), dataset="isprs_potsdam")
    scheme, train, val = train_val_pairs(dc)
    assert scheme.name == "isprs_mmseg" and [p.group for p in val] == ["2_13"] and len(train) == 3
    assert len(label_budget(train, 2)) == 2  # the rest of the kit works on these pairs unchanged
    _, train, val = train_val_pairs(replace(dc, val_groups=("2_10",)))
    assert [p.group for p in val] == ["2_10"] and sorted(p.group for p in train) == ["2_11", "2_13", "3_10"]


def test_check_data_cli_reports_form_splits_and_classes(tmp_path, capsys):
    _loveda_release(tmp_path)
    assert main(["check-data", "--dataset", "loveda", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "LoveDA, release form; 5 image(s), 4 with masks" in out
    assert "split train       3 image(s) (3 labelled) in 3 scene(s)" in out
    assert "split test        1 image(s) (0 labelled)" in out
    assert "scheme 'loveda'" in out and "agriculture" in out
    assert main(["check-data", "--dataset", "isprs_potsdam", str(tmp_path)]) == 2
    assert "not a ISPRS Potsdam folder" in capsys.readouterr().err


def test_every_layout_names_a_licence_and_examples():
    for lay in LAYOUTS.values():
        assert lay.licence and lay.url and all(f.example for f in lay.forms)
