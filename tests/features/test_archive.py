"""Sharded feature extraction of an archive (``features/archive``) under ``accelerate launch``."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import ACCELERATE, SAMPLES, launch

pytestmark = pytest.mark.slow
if not ACCELERATE.exists():
    pytest.skip("accelerate's launcher is not installed beside this Python", allow_module_level=True)


def test_feature_extraction_sharded_across_processes_writes_each_tile_once(tmp_path):
    from diffhrnet_lab.data.io import read_tile, write_geotiff

    src = sorted((SAMPLES / "unlabelled").glob("*.tif"))[:5]
    for f in src:
        write_geotiff(tmp_path / "archive" / "sub" / f.name, read_tile(f).image[:, :72, :88])
    cli = ["-m", "diffhrnet_lab.cli", "features", "--data", str(tmp_path / "archive"), "--set", "features.cache_window=64"]
    launch(1, *cli, "--cache", str(tmp_path / "one"))
    launch(2, *cli, "--cache", str(tmp_path / "two"))
    (m1,), (m2,) = (tmp_path / "one").rglob("manifest.json"), (tmp_path / "two").rglob("manifest.json")
    man1, man2 = json.loads(m1.read_text()), json.loads(m2.read_text())
    assert man2["processes"] == 2 and sorted(man2["written_by"]) == sorted(man1["written_by"])
    assert len(man2["written_by"]) == 5 and set(man2["written_by"].values()) == {0, 1}  # both worked, disjointly
    f1 = sorted(m1.parent.glob("*.safetensors"))
    f2 = sorted(m2.parent.glob("*.safetensors"))
    assert [f.name for f in f1] == [f.name for f in f2] and len(f1) == 5
    assert not [p for p in (tmp_path / "two").rglob("*") if ".tmp" in p.name]
    for x, y in zip(f1, f2):
        a, b = load_file(str(x)), load_file(str(y))
        for k in a:  # float16 files: one rounding step apart at most when thread counts differ
            torch.testing.assert_close(a[k].float(), b[k].float(), atol=2e-3, rtol=2e-3)
