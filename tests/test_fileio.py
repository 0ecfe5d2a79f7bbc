"""Root helpers of ``fileio``: markdown tables, safetensors, atomic writes."""

import pytest
import torch

from diffhrnet_lab.errors import DataError
from diffhrnet_lab.fileio import atomic_save_tensors, atomic_write_text, load_tensors, markdown_table, save_tensors


def test_markdown_table_exact_text():
    table = markdown_table(["method", "mIoU", "steps"], [("hrnet", 41.5, 300), ["diffhrnet", None, 0]])
    assert table == ("| method | mIoU | steps |\n"
                     "|---|---|---|\n"
                     "| hrnet | 41.5 | 300 |\n"
                     "| diffhrnet | None | 0 |")
    assert markdown_table(["a"], []) == "| a |\n|---|"


def test_tensors_round_trip_and_a_corrupt_file_is_named(tmp_path):
    t = {"w": torch.arange(6.0).reshape(2, 3).t(), "b": torch.tensor([1, 2], dtype=torch.int64)}  # non-contiguous
    save_tensors(tmp_path / "a.safetensors", t)
    atomic_save_tensors(tmp_path / "b.safetensors", t)
    for name in ("a", "b"):
        back = load_tensors(tmp_path / f"{name}.safetensors")
        assert back.keys() == t.keys() and all(torch.equal(back[k], t[k]) and back[k].dtype == t[k].dtype for k in t)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors"]  # no temporaries
    (tmp_path / "c.safetensors").write_bytes((tmp_path / "a.safetensors").read_bytes()[:40])
    with pytest.raises(DataError, match=r"c\.safetensors: cannot read safetensors file"):
        load_tensors(tmp_path / "c.safetensors")


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "x.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_outputs_get_the_permissions_of_any_new_file_not_safetensors_0600(tmp_path):
    """Checkpoints, bundles and caches must be readable by whoever a run folder is shared with."""
    import os

    from diffhrnet_lab.fileio import atomic_dir

    umask = os.umask(0o022)
    try:
        atomic_save_tensors(tmp_path / "a.safetensors", {"x": torch.zeros(2)})
        with atomic_dir(tmp_path / "ckpt") as d:
            save_tensors(d / "model.safetensors", {"x": torch.ones(2)})
            (d / "model.json").write_text("{}")
        modes = {p.name: p.stat().st_mode & 0o777 for p in [tmp_path / "a.safetensors", *(tmp_path / "ckpt").iterdir()]}
    finally:
        os.umask(umask)
    assert modes == {"a.safetensors": 0o644, "model.safetensors": 0o644, "model.json": 0o644}
