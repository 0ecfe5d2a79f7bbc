"""The label-efficiency rotation: every scene held out in turn, runs paired across methods, paired
bootstrap intervals (issue 16)."""

import json
import shutil
from itertools import product

import numpy as np
import pytest

from diffhrnet_lab.config import embedded_ddpm_dir, profile_config, replace
from diffhrnet_lab.errors import ConfigError, DataError
from diffhrnet_lab.experiments.label_efficiency import (bootstrap_mean, check_paired, folds, label_efficiency,
                                                       markdown, run_config, summarise)

METHODS = ("hrnet", "ddpm_mlp", "diffhrnet")


def _rotation_cfg(**le):
    cfg = profile_config("smoke")
    cfg.data = replace(cfg.data, scheme="samples")
    cfg.label_efficiency = replace(cfg.label_efficiency, held_out="all", methods=METHODS, **le)
    return cfg


def test_rotation_on_three_scenes_gives_complete_rows_paired_by_fold_seed_and_scenes(make_labelled, tmp_path, capsys):
    root = make_labelled(3, bands=4)  # 3 flat tiles = 3 scenes; 4 bands like the embedded tiny DDPM
    cfg = _rotation_cfg(budgets=(1, 2), seeds=(0, 1))
    out = tmp_path / "le"
    result = label_efficiency(root, out, cfg, ddpm=embedded_ddpm_dir(), progress=False, command="diffhrnet-lab x")
    scenes = ["t0", "t1", "t2"]
    assert result["folds"] == scenes and result["held_out"] == "all" and result["command"] == "diffhrnet-lab x"
    rows = result["rows"]
    assert sorted((r["held_out"], r["budget"], r["seed"], r["method"]) for r in rows) == sorted(
        product(scenes, (1, 2), (0, 1), METHODS))
    cells = {}
    for r in rows:
        assert r["held_out"] not in r["train_groups"] and len(r["train_groups"]) == r["budget"]
        assert set(r["iou"]) == set(result["classes"]) and len(result["classes"]) == 7 and 0 <= r["miou"] <= 1
        cells.setdefault((r["held_out"], r["budget"], r["seed"]), set()).add(tuple(r["train_groups"]))
    assert all(len(v) == 1 for v in cells.values())  # same training scenes for every method of a cell
    for fold, seed in product(scenes, (0, 1)):  # nested budgets: the 2-scene set contains the 1-scene set
        assert set(next(iter(cells[(fold, 1, seed)]))) <= set(next(iter(cells[(fold, 2, seed)])))
    # the summary's paired gain is the mean of the per-(fold, seed) differences
    by = {(r["method"], r["held_out"], r["budget"], r["seed"]): r["miou"] for r in rows}
    gain = np.mean([100 * (by[("diffhrnet", f, 1, s)] - by[("hrnet", f, 1, s)]) for f, s in product(scenes, (0, 1))])
    entry = next(e for e in result["summary"] if e["method"] == "diffhrnet" and e["budget"] == 1)
    assert entry["n"] == 6 and abs(entry["gain_vs_hrnet"]["mean"] - gain) < 1e-9
    assert entry["gain_vs_hrnet"]["lo"] <= entry["gain_vs_hrnet"]["mean"] <= entry["gain_vs_hrnet"]["hi"]
    assert next(e for e in result["summary"] if e["method"] == "hrnet")["gain_vs_hrnet"] is None
    saved = json.loads((out / "label_efficiency.json").read_text())
    assert saved["rows"] == rows and saved["settings"]["label_efficiency"]["held_out"] == "all"
    assert (out / "runs" / "t1" / "diffhrnet_b2_s1" / "summary.json").exists()
    assert "gain vs HRNet [95 % CI]" in (out / "table.md").read_text()
    assert (out / "label_efficiency.png").read_bytes()[:4] == b"\x89PNG"
    csv = (out / "results.csv").read_text().splitlines()
    assert len(csv) == 1 + len(rows) and csv[0].startswith("method,held_out,budget,seed,miou,train_groups")
    # a re-run trains nothing and gives the same table
    stamp = (out / "runs" / "t0" / "hrnet_b1_s0" / "summary.json").stat().st_mtime_ns
    capsys.readouterr()
    again = label_efficiency(root, out, cfg, ddpm=embedded_ddpm_dir(), progress=False)
    assert "[finetune]" not in capsys.readouterr().out and again["summary"] == result["summary"]
    assert (out / "runs" / "t0" / "hrnet_b1_s0" / "summary.json").stat().st_mtime_ns == stamp


def test_folds_are_every_scene_or_the_named_one_and_bad_settings_fail_before_training(make_labelled):
    root = make_labelled(3)
    cfg = _rotation_cfg()
    assert folds(cfg, root) == ["t0", "t1", "t2"]
    cfg.label_efficiency = replace(cfg.label_efficiency, held_out="t1")
    assert folds(cfg, root) == ["t1"]
    cfg.label_efficiency = replace(cfg.label_efficiency, held_out="t9")
    with pytest.raises(DataError, match="held-out scene 't9' not found"):
        folds(cfg, root)
    cfg.label_efficiency = replace(cfg.label_efficiency, held_out="all", budgets=(3,))
    with pytest.raises(DataError, match=r"label budget\(s\) \[3\] impossible with 2 training scene\(s\)"):
        folds(cfg, root)


def test_run_config_data_does_not_depend_on_the_method(tmp_path):
    cfg = profile_config("quick")
    configs = [run_config(cfg, tmp_path, tmp_path / "d", tmp_path / "fc", m, 2, 1, "Tile_3") for m in METHODS]
    assert all(c.data == configs[0].data for c in configs)
    assert configs[0].data.val_groups == ("Tile_3",) and configs[0].data.label_budget == 2
    assert [c.model.method for c in configs] == ["hrnet", "ddpm_mlp", "diffhrnet"]
    assert all(c.train.eval_every == c.train.steps for c in configs)  # scored once, at the end
    with pytest.raises(DataError, match="not 'all'"):
        run_config(replace_held_out(cfg, "all"), tmp_path, tmp_path / "d", tmp_path / "fc", "hrnet", 1, 0)


def replace_held_out(cfg, held_out):
    cfg.label_efficiency = replace(cfg.label_efficiency, held_out=held_out)
    return cfg


def test_bootstrap_of_a_constant_gain_is_that_gain():
    b = bootstrap_mean([2.0] * 12, resamples=10_000, seed=0)
    assert b == {"mean": 2.0, "lo": 2.0, "hi": 2.0, "n": 12}


def test_bootstrap_of_symmetric_noise_contains_the_mean_and_matches_the_normal_interval():
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 1, 200)
    diffs = 1.0 + np.concatenate([noise, -noise])  # exactly symmetric about 1.0
    b = bootstrap_mean(diffs, resamples=10_000, seed=0)
    assert abs(b["mean"] - 1.0) < 1e-12 and b["lo"] < 1.0 < b["hi"]
    half = 1.96 * diffs.std(ddof=1) / np.sqrt(diffs.size)  # the textbook interval, for a large sample
    assert abs((b["hi"] - b["lo"]) / 2 - half) < 0.1 * half
    assert abs((b["hi"] + b["lo"]) / 2 - 1.0) < 0.1 * half  # symmetric about the mean
    assert bootstrap_mean(diffs, resamples=10_000, seed=0) == b  # fixed seed: same interval
    wide = bootstrap_mean(diffs, resamples=10_000, seed=0, confidence=0.99)
    assert wide["lo"] < b["lo"] and wide["hi"] > b["hi"]


def test_paired_gain_removes_the_scene_effect_that_the_unpaired_spread_keeps():
    """HRNet varies by 40 points between folds; Diff-HRNet is exactly 2 points better in every pair:
    the paired interval is [2, 2] while the spread of each method's mIoU stays wide."""
    rows = []
    for fold, base in (("A", 0.20), ("B", 0.60), ("C", 0.40)):
        for seed, jitter in enumerate((0.0, 0.05, -0.03)):
            m = base + jitter
            rows += [{"method": "hrnet", "held_out": fold, "budget": 1, "seed": seed, "miou": m},
                     {"method": "ddpm_mlp", "held_out": fold, "budget": 1, "seed": seed, "miou": m - 0.10 * seed},
                     {"method": "diffhrnet", "held_out": fold, "budget": 1, "seed": seed, "miou": m + 0.02}]
    table = summarise(rows, resamples=5000, seed=0)
    d = next(e for e in table if e["method"] == "diffhrnet")
    assert d["n"] == 9
    assert d["gain_vs_hrnet"]["lo"] == pytest.approx(2.0) and d["gain_vs_hrnet"]["hi"] == pytest.approx(2.0)
    assert d["miou"]["hi"] - d["miou"]["lo"] > 10  # unpaired: the fold effect dominates
    assert d["gain_vs_ddpm_mlp"]["mean"] == pytest.approx(2.0 + 10 * (0 + 1 + 2) / 3)
    text = markdown(table)
    assert "| diffhrnet | 1 | 9 |" in text and "+2.0 [+2.0, +2.0]" in text


def test_check_paired_refuses_missing_runs_and_different_training_scenes():
    row = {"held_out": "A", "budget": 1, "seed": 0, "miou": 0.5}
    ok = [{**row, "method": m, "train_groups": ["B"]} for m in METHODS]
    check_paired(ok, METHODS)
    with pytest.raises(DataError, match=r"no run of \['diffhrnet'\]"):
        check_paired(ok[:2], METHODS)
    bad = ok[:2] + [{**row, "method": "diffhrnet", "train_groups": ["C"]}]
    with pytest.raises(DataError, match="methods trained on different scenes"):
        check_paired(bad, METHODS)


def test_a_third_baseline_gets_its_own_paired_gains_and_column():
    """A baseline variant run beside the rotation (the pixel classifier on other DDPM blocks) is paired
    like the two defaults: Diff-HRNet is 1 point over it in every pair, 3 over the default one."""
    rows = []
    for fold, base in (("A", 0.30), ("B", 0.50)):
        for seed in (0, 1):
            rows += [{"method": "hrnet", "held_out": fold, "budget": 1, "seed": seed, "miou": base - 0.1},
                     {"method": "ddpm_mlp", "held_out": fold, "budget": 1, "seed": seed, "miou": base},
                     {"method": "ddpm_mlp_b01", "held_out": fold, "budget": 1, "seed": seed, "miou": base + 0.02},
                     {"method": "diffhrnet", "held_out": fold, "budget": 1, "seed": seed, "miou": base + 0.03}]
    table = summarise(rows, resamples=1000, baselines=("hrnet", "ddpm_mlp", "ddpm_mlp_b01"))
    d = next(e for e in table if e["method"] == "diffhrnet")
    assert d["gain_vs_ddpm_mlp_b01"]["mean"] == pytest.approx(1.0)
    assert d["gain_vs_ddpm_mlp"]["mean"] == pytest.approx(3.0)
    assert next(e for e in table if e["method"] == "ddpm_mlp_b01")["gain_vs_ddpm_mlp_b01"] is None
    text = markdown(table)
    assert "gain vs ddpm_mlp_b01 [95 % CI]" in text
    assert "| diffhrnet | 1 | 4 | 43.0 [33.0, 53.0] | +13.0 [+13.0, +13.0] | +3.0 [+3.0, +3.0] | +1.0 [+1.0, +1.0] |" in text
    assert "gain vs ddpm_mlp_b01" not in markdown(summarise(rows, resamples=1000))


def test_a_method_on_a_frozen_base_trains_after_its_base_and_is_reused_on_a_rerun(make_labelled, tmp_path, capsys):
    """``diffhrnet_fb`` (round 25) reads the ``ddpm_mlp`` run of its own cell: a fold trains both, in
    that order; a re-run finds both finished (the base's path part of the model) and trains nothing."""
    root = make_labelled(3, bands=4)
    cfg = _rotation_cfg(budgets=(1,), seeds=(0,))
    cfg.label_efficiency = replace(cfg.label_efficiency, held_out="t1", methods=("ddpm_mlp", "diffhrnet_fb"))
    out = tmp_path / "le"
    result = label_efficiency(root, out, cfg, ddpm=embedded_ddpm_dir(), progress=False)
    assert [r["method"] for r in result["rows"]] == ["ddpm_mlp", "diffhrnet_fb"]
    meta = json.loads((out / "runs" / "t1" / "diffhrnet_fb_b1_s0" / "last" / "model.json").read_text())
    assert meta["model"]["base_init"] == str(out / "runs" / "t1" / "ddpm_mlp_b1_s0")
    capsys.readouterr()
    again = label_efficiency(root, out, cfg, ddpm=embedded_ddpm_dir(), progress=False)
    assert "[finetune]" not in capsys.readouterr().out and again["rows"] == result["rows"]


def test_finished_runs_are_reused_with_the_same_ddpm_under_another_path_and_refused_with_another(
        make_labelled, tmp_path, capsys):
    """Runs record their DDPM's weight hash: a renamed copy of the bundle reuses them, a bundle with
    other weights is refused before anything trains (its rows would be paired with the old ones)."""
    from safetensors.torch import load_file, save_file

    from diffhrnet_lab.ddpm.unet import bundle_weights

    root = make_labelled(3, bands=4)
    cfg = _rotation_cfg(budgets=(1,), seeds=(0,))
    cfg.label_efficiency = replace(cfg.label_efficiency, held_out="t1", methods=("hrnet", "ddpm_mlp"))
    out = tmp_path / "le"
    first = label_efficiency(root, out, cfg, ddpm=embedded_ddpm_dir(), progress=False)
    moved = tmp_path / "moved"
    shutil.copytree(embedded_ddpm_dir(), moved)
    capsys.readouterr()
    assert label_efficiency(root, out, cfg, ddpm=moved, progress=False)["rows"] == first["rows"]
    assert "[finetune]" not in capsys.readouterr().out
    state = load_file(str(bundle_weights(moved)))
    name = sorted(state)[0]
    state[name] = state[name] + 1
    save_file(state, str(bundle_weights(moved)))
    with pytest.raises(ConfigError, match=r"ddpm_mlp_b1_s0: this finished run read another DDPM"):
        label_efficiency(root, out, cfg, ddpm=moved, progress=False)
