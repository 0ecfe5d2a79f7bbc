"""The embedded Dubai scenes and DDPM bundle, and ``make demo`` as the few-label comparison on them
(issue 16)."""

import json
import os
from pathlib import Path

import pytest

from diffhrnet_lab.config import (dubai_dir, embedded_dubai_ddpm_dir, embedded_dubai_dir, profile_config,
                                  replace)
from diffhrnet_lab.errors import ConfigError, DataError
from diffhrnet_lab.experiments.demo import ROTATION_FIGURE, demo_configs, run_demo

SCENES = ["Tile_1", "Tile_2", "Tile_3", "Tile_4"]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_embedded_dubai_copy_is_byte_identical_to_the_shared_one():
    shared = os.environ.get("DHL_DUBAI_DIR")
    if not shared:
        pytest.skip("DHL_DUBAI_DIR unset: nothing to compare the embedded copy with")
    shared, mine = Path(shared), embedded_dubai_dir()
    names = _files(shared)
    assert names == _files(mine) and len(names) == 73  # 36 images + 36 masks + README.md
    for name in names:
        assert (mine / name).read_bytes() == (shared / name).read_bytes(), name


def test_embedded_dubai_layout_and_attribution():
    root = embedded_dubai_dir()
    assert sorted(p.name for p in (root / "images").iterdir()) == SCENES
    for scene in SCENES:
        assert len(list((root / "images" / scene).glob("*.jpg"))) == 9
        assert len(list((root / "labels" / scene).glob("*.png"))) == 9
    readme = (root.parent / "README.md").read_text()
    assert "Humans in the Loop, MBRSC" in readme and "CC0" in readme and "dubai_aerial/" in readme


def test_dubai_dir_falls_back_to_the_embedded_copy_and_refuses_a_missing_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("DHL_DUBAI_DIR", raising=False)
    assert dubai_dir() == embedded_dubai_dir()
    monkeypatch.setenv("DHL_DUBAI_DIR", str(tmp_path))
    assert dubai_dir() == tmp_path
    monkeypatch.setenv("DHL_DUBAI_DIR", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="missing: no such folder"):
        dubai_dir()


def test_embedded_dubai_ddpm_is_a_three_band_bundle_trained_on_the_dubai_images():
    from diffhrnet_lab.ddpm.unet import load_bundle

    bundle = load_bundle(embedded_dubai_ddpm_dir())
    assert bundle.bands == 3
    readme = (embedded_dubai_ddpm_dir() / "README.md").read_text()
    assert "--pool data_samples/dubai_aerial/images" in readme and "--export data_samples/ddpm_dubai" in readme
    assert "dubai_aerial" in str(bundle.meta.get("pool"))


def test_demo_scenes_are_disjoint_and_every_method_gets_the_same_data(tmp_path):
    cfg = profile_config("quick")
    configs = demo_configs(cfg, embedded_dubai_dir(), embedded_dubai_ddpm_dir(), tmp_path / "fc")
    assert list(configs) == ["hrnet", "ddpm_mlp", "diffhrnet"]
    d, t = configs["hrnet"].data, configs["hrnet"].train
    assert all(c.data == d and c.train == t for c in configs.values())
    # no selection scene: one validation, at the last step, on the test scene: the rotation's protocol
    assert d.train_groups == (cfg.demo.train_scene,) and d.val_groups == (cfg.demo.test_scene,)
    assert t.steps == cfg.label_efficiency.train_steps == 150 and t.eval_every == t.steps
    assert cfg.demo.train_scene != cfg.demo.test_scene and d.label_budget is None
    assert all(c.features.cache and c.features.checkpoint == str(embedded_dubai_ddpm_dir()) for c in configs.values())
    cfg.demo = replace(cfg.demo, select_scene="Tile_3")
    c = demo_configs(cfg, embedded_dubai_dir(), embedded_dubai_ddpm_dir(), tmp_path / "fc")["hrnet"]
    assert c.data.val_groups == ("Tile_3",) and c.train.eval_every == 75  # a selection scene: picked every 75 steps
    cfg.demo = replace(cfg.demo, test_scene="Tile_3")
    with pytest.raises(DataError, match="different scenes; got train Tile_2, select Tile_3, test Tile_3"):
        demo_configs(cfg, embedded_dubai_dir(), embedded_dubai_ddpm_dir(), tmp_path / "fc")
    cfg.demo = replace(cfg.demo, select_scene="", test_scene="Tile_9")
    with pytest.raises(DataError, match=r"demo scene\(s\) \['Tile_9'\] not found"):
        demo_configs(cfg, embedded_dubai_dir(), embedded_dubai_ddpm_dir(), tmp_path / "fc")


def test_smoke_demo_trains_on_one_scene_and_scores_its_last_step_on_another(tmp_path):
    from diffhrnet_lab.data.datasets import find_pairs
    from diffhrnet_lab.inference.evaluate import score_checkpoint

    out = tmp_path / "demo"
    report = run_demo(out, profile="smoke", progress=False)
    full = profile_config("smoke")
    cfg = full.demo
    result = json.loads((out / "results.json").read_text())
    assert result["scenes"] == {"train": cfg.train_scene, "test": cfg.test_scene} and "select_miou" not in result
    assert result["test_tiles"] == [f"{cfg.test_scene}/image_part_001"]  # smoke: one image per scene
    test_pairs = [p for p in find_pairs(embedded_dubai_dir()) if p.id in result["test_tiles"]]
    configs = demo_configs(full, embedded_dubai_dir(), embedded_dubai_ddpm_dir(), out / "feature_cache")
    for key, name in (("hrnet", "HRNet"), ("ddpm_mlp", "DDPM pixel classifier"), ("diffhrnet", "Diff-HRNet")):
        summary = json.loads((out / key / "summary.json").read_text())
        assert summary["train_groups"] == [cfg.train_scene] and summary["val_groups"] == [cfg.test_scene]
        assert result["best_step"][name] == summary["steps"] == full.train.steps  # the last step, nothing picked
        assert set(result[name]["iou"]) == {"building", "land", "road", "vegetation", "water"}
        # the run's one validation is the test score: the saved last checkpoint scores the same
        _, _, again = score_checkpoint(out / key / "last", test_pairs, configs[key].features, full.train.eval_window)
        assert result[name]["miou"] == pytest.approx(again.miou, abs=1e-9), name
        assert result[name]["iou"] == pytest.approx(again.as_dict()["iou"], abs=1e-9, nan_ok=True), name
    text = report.read_text()
    for scene in (cfg.train_scene, cfg.test_scene):
        assert f"**{scene}**" in text
    assert "last of 6 steps" in text and "(selection)" not in text
    assert "| Diff-HRNet |" in text and "| DDPM pixel classifier |" in text and "Humans in the Loop, MBRSC" in text
    for fig in ("predictions.png", "curves.png", "iou.png", "miou.png", "samples.png"):
        assert (out / fig).read_bytes()[:4] == b"\x89PNG" and f"]({fig})" in text
    rotation = json.loads((ROTATION_FIGURE.with_suffix(".json")).read_text())  # committed with the repository
    diff = next(r for r in rotation["summary"] if r["method"] == "diffhrnet" and r["budget"] == 1)
    assert f"| diffhrnet | 1 | {diff['n']} | {diff['miou']['mean']:.1f} [" in text  # the rotation's numbers, quoted
    assert (out / ROTATION_FIGURE.name).read_bytes()[:4] == b"\x89PNG"


def test_a_named_selection_scene_picks_the_best_step_there_and_reports_it(tmp_path):
    cfg = profile_config("smoke")
    cfg.demo = replace(cfg.demo, select_scene="Tile_3", methods=("hrnet",))
    report = run_demo(tmp_path / "demo", cfg=cfg, progress=False)
    result = json.loads((tmp_path / "demo" / "results.json").read_text())
    summary = json.loads((tmp_path / "demo" / "hrnet" / "summary.json").read_text())
    assert result["scenes"] == {"train": "Tile_2", "select": "Tile_3", "test": "Tile_1"}
    assert summary["val_groups"] == ["Tile_3"] and [r["step"] for r in summary["history"] if "val_miou" in r] == [6]
    assert result["select_miou"]["HRNet"] == summary["best_miou"]
    assert "**Tile_3**" in report.read_text() and "mIoU % on Tile_3 (selection)" in report.read_text()


def test_demo_without_a_ddpm_bundle_says_how_to_make_one(tmp_path):
    with pytest.raises(DataError, match=r"missing: no DDPM bundle \(ddpm.json\); make it with `diffhrnet-lab pretrain"):
        run_demo(tmp_path / "out", ddpm=tmp_path / "missing", profile="smoke", progress=False)
