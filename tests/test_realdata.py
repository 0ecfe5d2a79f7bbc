"""The real Dubai aerial tiles through the same loaders (skipped when DHL_DUBAI_DIR is absent)."""

import numpy as np

from diffhrnet_lab.data.datasets import LabelledTiles, find_pairs, label_budget, split_by_group
from diffhrnet_lab.data.io import read_mask, read_tile
from diffhrnet_lab.data.labels import DUBAI


def test_every_dubai_mask_decodes_with_no_unknown_colour(dubai):
    pairs = find_pairs(dubai)
    assert len(pairs) == 36 and {p.group for p in pairs} == {"Tile_1", "Tile_2", "Tile_3", "Tile_4"}
    counts = np.zeros(DUBAI.num_classes + 1, np.int64)
    for p in pairs:
        m = read_mask(p.mask, DUBAI)  # raises, naming file and colours, on any unknown colour
        img = read_tile(p.image, expected_bands=3)
        assert m.shape == img.shape, p
        counts[:-1] += np.bincount(m[m != 255].ravel(), minlength=DUBAI.num_classes)
        counts[-1] += (m == 255).sum()
    assert (counts[:-1] > 0).all()
    land = counts[1] / counts[:-1].sum()
    assert 0.35 < land < 0.6  # README: Land covers about half of all pixels


def test_dubai_split_by_tile_and_dataset(dubai):
    pairs = find_pairs(dubai)
    train, val = split_by_group(pairs, val_groups=["Tile_4"])
    assert len(val) == 9 and all(p.group != "Tile_4" for p in train)
    budget = label_budget(train, 1, seed=0)
    assert len({p.group for p in budget}) == 1 and len(budget) == 9
    ds = LabelledTiles(budget[:2], DUBAI, crop_size=256, augment=True)
    item = ds[0]
    assert item["image"].shape == (3, 256, 256) and item["mask"].max() <= 255


def test_label_efficiency_command_on_dubai_runs_every_method_and_skips_finished_runs(dubai, tmp_path, capsys):
    import json

    from diffhrnet_lab.cli import main

    out = tmp_path / "le"
    args = ["label-efficiency", "--data", str(dubai), "--profile", "smoke", "--out", str(out),
            "--set", "data.max_per_group=1"]
    assert main(args) == 0
    result = json.loads((out / "label_efficiency.json").read_text())
    assert result["held_out"] == "Tile_1"
    assert {(r["method"], r["budget"], r["seed"]) for r in result["rows"]} == {
        (m, 1, 0) for m in ("hrnet", "ddpm_mlp", "diffhrnet")}
    assert all("Tile_1" not in r["train_groups"] and 0 <= r["miou"] <= 1 for r in result["rows"])
    assert (out / "ddpm" / "final" / "ddpm.json").exists()  # pretrained on the pool of all scenes
    assert len(list((out / "feature_cache").rglob("*.safetensors"))) == 2  # 1 image x (held-out + 1 scene)
    assert (out / "label_efficiency.png").stat().st_size > 5000 and "| diffhrnet |" in (out / "table.md").read_text()
    stamp = (out / "runs" / "Tile_1" / "diffhrnet_b1_s0" / "summary.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    again = capsys.readouterr().out
    assert "[finetune]" not in again and "seed 0" not in again and "| diffhrnet |" in again
    assert (out / "runs" / "Tile_1" / "diffhrnet_b1_s0" / "summary.json").stat().st_mtime_ns == stamp
    assert main([*args, "--set", "label_efficiency.held_out=Tile_9"]) == 2
    assert "held-out scene 'Tile_9' not found" in capsys.readouterr().err
    assert main([*args, "--set", "label_efficiency.budgets=4"]) == 2
    assert "label budget(s) [4] impossible with 3 training scene(s)" in capsys.readouterr().err


def test_label_efficiency_summary_is_mean_and_sample_std_with_paired_gap_to_hrnet():
    from diffhrnet_lab.experiments.label_efficiency import markdown, summarise

    rows = [{"method": m, "budget": 1, "seed": s, "miou": v}
            for m, vals in (("hrnet", (0.40, 0.44)), ("late", (0.50, 0.56))) for s, v in enumerate(vals)]
    table = summarise(rows)
    late = next(r for r in table if r["method"] == "late")
    assert abs(late["miou"]["mean"] - 53.0) < 1e-9 and abs(late["std"] - np.std([50, 56], ddof=1)) < 1e-9
    assert abs(late["gain_vs_hrnet"]["mean"] - 11.0) < 1e-9  # pairs (seed 0: +10, seed 1: +12)
    assert abs(late["gain_vs_hrnet"]["lo"] - 10.0) < 1e-9 and abs(late["gain_vs_hrnet"]["hi"] - 12.0) < 1e-9
    assert "| late | 1 | 2 | 53.0 [50.0, 56.0] | +11.0 [+10.0, +12.0] |" in markdown(table)


def test_label_efficiency_run_config_holds_out_the_scene_and_scores_only_at_the_end(tmp_path):
    from diffhrnet_lab.config import profile_config, replace
    from diffhrnet_lab.experiments.label_efficiency import run_config

    cfg = profile_config("quick")
    c = run_config(cfg, tmp_path, tmp_path / "ddpm", tmp_path / "fc", "late", 2, 1)
    assert c.data.val_groups == ("Tile_1",) and c.data.label_budget == 2 and c.data.seed == 1 and c.train.seed == 1
    assert c.model.method == "diffhrnet" and c.model.stages == "late" and c.features.cache
    assert c.train.steps == c.train.eval_every == 150 and c.train.eval_window == 0
    assert c.features.cache_dir == str(tmp_path / "fc")
    cfg.features = replace(cfg.features, cache_dir="/elsewhere")
    assert run_config(cfg, tmp_path, tmp_path / "ddpm", tmp_path / "fc", "hrnet", 1, 0).features.cache_dir == "/elsewhere"
