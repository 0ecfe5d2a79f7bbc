"""The label-efficiency study: its summary, its run configs, and the command on the real Dubai tiles."""

import numpy as np
import pytest



@pytest.mark.slow
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
    assert all("Tile_1" not in r["train_groups"] for r in result["rows"])
    for r in result["rows"]:  # each row's mIoU is its run's score on the held-out scene
        summary = json.loads((out / "runs" / "Tile_1" / f"{r['method']}_b1_s0" / "summary.json").read_text())
        assert r["miou"] == summary["best_miou"] and summary["val_groups"] == ["Tile_1"]
        run = out / "runs" / "Tile_1" / f"{r['method']}_b1_s0"  # resume state dropped, weights kept
        assert not (run / "checkpoints").exists() and (run / "best" / "model.safetensors").is_file()
    assert (out / "ddpm" / "final" / "ddpm.json").exists()  # pretrained on the pool of all scenes
    assert len(list((out / "feature_cache").rglob("*.safetensors"))) == 2  # 1 image x (held-out + 1 scene)
    assert (out / "label_efficiency.png").stat().st_size > 5000 and "| diffhrnet |" in (out / "table.md").read_text()
    stamp = (out / "runs" / "Tile_1" / "diffhrnet_b1_s0" / "summary.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    again = capsys.readouterr().out
    assert "[finetune]" not in again and "seed 0" not in again and "| diffhrnet |" in again
    assert (out / "runs" / "Tile_1" / "diffhrnet_b1_s0" / "summary.json").stat().st_mtime_ns == stamp
    # a scoring-only setting scores the finished run again instead of training it again
    run = out / "runs" / "Tile_1" / "diffhrnet_b1_s0"
    assert main([*args, "--set", "model.correction_scale=1.0"]) == 0
    again = capsys.readouterr().out
    assert "[finetune]" not in again and "scoring again with {'correction_scale': 1.0}" in again
    kept = json.loads((run / "rescored.json").read_text())
    row = next(r for r in json.loads((out / "label_efficiency.json").read_text())["rows"] if r["method"] == "diffhrnet")
    assert row["miou"] == kept["scores"]["miou"] and (run / "summary.json").stat().st_mtime_ns == stamp
    from diffhrnet_lab.config import FeatureConfig
    from diffhrnet_lab.data.datasets import find_pairs, first_per_group
    from diffhrnet_lab.inference.evaluate import score_checkpoint
    from diffhrnet_lab.models.segmenters import load_segmenter

    f = json.loads((run / "last" / "model.json").read_text())["features"]
    fc = FeatureConfig(**{**f, "timesteps": tuple(f["timesteps"]), "blocks": tuple(f["blocks"])})
    held = [p for p in first_per_group(find_pairs(dubai), 1) if p.group == "Tile_1"]
    model, meta = load_segmenter(run / "last", fc.checkpoint, scoring={"correction_scale": 1.0})
    assert model.correction_scale == 1.0 and meta["model"]["correction_scale"] == 1.0
    from diffhrnet_lab.errors import ConfigError
    with pytest.raises(ConfigError, match="not scoring-only"):  # what a model learned is not a scoring choice
        load_segmenter(run / "last", fc.checkpoint, scoring={"residual": False})
    _, _, sc = score_checkpoint(run / "last", held, fc, scoring={"correction_scale": 1.0})
    assert sc.as_dict()["miou"] == kept["scores"]["miou"]
    assert main(args) == 0  # back to the setting it was trained and scored with: its own summary
    assert "scoring again" not in capsys.readouterr().out
    assert next(r for r in json.loads((out / "label_efficiency.json").read_text())["rows"]
                if r["method"] == "diffhrnet")["miou"] == json.loads((run / "summary.json").read_text())["best_miou"]
    # a finished run of another model than the method now means is not reused under its name
    assert main([*args, "--set", "model.residual=false"]) == 2
    err = capsys.readouterr().err
    assert "diffhrnet_b1_s0: this finished run trained another model" in err and "residual True (now False)" in err
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
    assert cfg.label_efficiency.held_out == "all"  # the rotation is the default protocol
    c = run_config(cfg, tmp_path, tmp_path / "ddpm", tmp_path / "fc", "late", 2, 1, "Tile_1")
    assert c.data.val_groups == ("Tile_1",) and c.data.label_budget == 2 and c.data.seed == 1 and c.train.seed == 1
    assert c.model.method == "diffhrnet" and c.model.stages == "late" and c.features.cache
    # scored once at the end, in windows (memory bounded by the window, not the scene)
    assert c.train.steps == c.train.eval_every == 150 and c.train.eval_window == cfg.train.eval_window == 128
    assert c.features.cache_dir == str(tmp_path / "fc")
    cfg.features = replace(cfg.features, cache_dir="/elsewhere")
    assert run_config(cfg, tmp_path, tmp_path / "ddpm", tmp_path / "fc", "hrnet", 1, 0, "Tile_1").features.cache_dir == "/elsewhere"


def test_a_finished_run_from_before_a_model_field_is_compared_as_what_it_trained(tmp_path):
    """A run whose model.json predates ``model.residual`` trained a plain fused model: it is reused as
    ``ms_norm`` (the old default) and refused as today's ``diffhrnet``."""
    import json

    from diffhrnet_lab.config import ModelConfig
    from diffhrnet_lab.errors import ConfigError
    from diffhrnet_lab.experiments.label_efficiency import check_same_model
    from diffhrnet_lab.experiments.methods import method_model

    run = tmp_path / "ms_norm_b1_s0"
    (run / "last").mkdir(parents=True)
    saved = {k: v for k, v in method_model(ModelConfig(), "ms_norm").__dict__.items()
             if k not in ("residual", "detach_base", "rgb_lr", "rgb_dropout")}
    (run / "last" / "model.json").write_text(json.dumps({"model": saved}))
    check_same_model(run, method_model(ModelConfig(), "ms_norm"), "ms_norm")  # no error
    with pytest.raises(ConfigError, match=r"residual False \(now True\)"):
        check_same_model(run, method_model(ModelConfig(), "diffhrnet"), "diffhrnet")


def test_only_a_model_that_uses_a_scoring_setting_is_scored_again(tmp_path, capsys):
    """Runs of ``hrnet`` and ``ddpm_mlp`` from before ``model.correction_scale`` existed keep their
    scores under today's default (0.5): the setting means nothing for them.  (Scoring them again
    would need weights these folders do not have, so the test fails loudly if it is tried.)"""
    import json

    from diffhrnet_lab.config import ModelConfig, ProfileConfig
    from diffhrnet_lab.experiments.label_efficiency import rescored
    from diffhrnet_lab.experiments.methods import method_model

    assert ModelConfig().correction_scale == 0.5
    summary = {"best_scores": {"miou": 0.25}}
    for method in ("hrnet", "ddpm_mlp", "ms_res"):
        run = tmp_path / method
        (run / "last").mkdir(parents=True)
        (run / "last" / "model.json").write_text(json.dumps({"model": {"method": method.split("_res")[0].replace(
            "ms", "diffhrnet"), "residual": method == "ms_res"}}))
        assert rescored(run, summary, method_model(ModelConfig(), method), ProfileConfig()) is summary
    assert "scoring again" not in capsys.readouterr().out
    with pytest.raises(Exception):  # a residual Diff-HRNet scored with 1.0 now wants 0.5: scored again
        rescored(tmp_path / "ms_res", summary, method_model(ModelConfig(), "diffhrnet"), ProfileConfig())
    assert "ms_res: scoring again with {'correction_scale': 0.5}" in capsys.readouterr().out


def test_a_finished_run_or_ddpm_of_other_settings_is_refused_not_reused(tmp_path):
    """A smoke experiment left in the same ``--out`` must not enter a quick one's table: its runs
    (2 steps) and its DDPM (4 steps) are refused with what differs, where they were reused before."""
    import json

    from diffhrnet_lab.config import profile_config
    from diffhrnet_lab.errors import ConfigError
    from diffhrnet_lab.experiments.label_efficiency import check_same_training, pretrain_pool_ddpm, run_config
    from diffhrnet_lab.training.finetune import run_settings

    smoke, quick = profile_config("smoke"), profile_config("quick")
    args = (tmp_path, tmp_path / "ddpm", tmp_path / "cache", "diffhrnet_st", 1, 0, "Tile_1", tmp_path)
    rc_smoke, rc_quick = run_config(smoke, *args), run_config(quick, *args)
    run = tmp_path / "runs" / "Tile_1" / "diffhrnet_st_b1_s0"
    summary = {"steps": rc_smoke.train.steps, "settings": json.loads(json.dumps(run_settings(rc_smoke)))}
    check_same_training(run, summary, rc_smoke)  # the same settings, read back from JSON: reused
    with pytest.raises(ConfigError, match=r"data.crop_size 64 \(now 96\).*train.steps 2 \(now 150\)"):
        check_same_training(run, summary, rc_quick)
    assert run_settings(rc_quick)["train.teacher"] == str((tmp_path / "runs" / "Tile_1" / "diffhrnet_b1_s0").resolve())
    with pytest.raises(ConfigError, match=r"train.steps 2 \(now 150\)"):  # a run from before settings were kept
        check_same_training(run, {"steps": 2}, rc_quick)
    final = tmp_path / "ddpm" / "final"
    final.mkdir(parents=True)
    (final / "ddpm.json").write_text(json.dumps({"step": smoke.ddpm.steps, "preset": smoke.ddpm.preset}))
    assert pretrain_pool_ddpm(smoke, tmp_path, tmp_path) == final
    with pytest.raises(ConfigError, match="pretrained for 4 steps .* asks for 600"):
        pretrain_pool_ddpm(quick, tmp_path, tmp_path)
