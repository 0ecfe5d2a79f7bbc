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
