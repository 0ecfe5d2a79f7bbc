"""Ablation sweeps: one experiment's config from the profile and its parameters, and the table."""

import pytest

from diffhrnet_lab.config import profile_config, replace
from diffhrnet_lab.errors import ConfigError
from diffhrnet_lab.experiments.sweep import (ABLATIONS, EXPERIMENT_PARAMS, TEST_FRACTION, experiment_config,
                                             markdown_table)


def test_full_profile_keeps_its_blocks_unless_a_configuration_names_others():
    """Regression: the sweep used to overwrite the profile's features with the notebook's defaults."""
    full = profile_config("full")
    assert full.features.blocks == (1, 2)
    assert experiment_config("full").features.blocks == (1, 2)
    assert experiment_config("full", blocks=[0]).features.blocks == (0,)
    assert experiment_config("full", blocks=["0", "2"], timesteps=[50]).features.timesteps == (50,)
    for empty in ("", [], None):
        cfg = experiment_config("full", blocks=empty, timesteps=empty, method=empty, label_budget=empty, seed=empty)
        assert cfg.features.blocks == (1, 2) and cfg.features.timesteps == full.features.timesteps
        assert cfg.model == full.model and cfg.train == full.train
        assert cfg.data == replace(full.data, test_fraction=TEST_FRACTION)  # sweeps report on test scenes
    assert experiment_config("full", test_fraction=0).data.test_fraction == 0.0


def test_experiment_parameters_land_in_their_sections():
    cfg = experiment_config("smoke", method="diffhrnet", stages="late", fusion="add", label_budget=2,
                            finetune_ddpm=1, seed=5)
    assert (cfg.model.method, cfg.model.stages, cfg.model.fusion, cfg.model.finetune_ddpm) == ("diffhrnet", "late", "add", True)
    assert cfg.data.label_budget == 2 and cfg.train.seed == 5
    assert experiment_config("smoke", label_budget=0).data.label_budget is None  # 0: every training scene
    with pytest.raises(ConfigError, match=r"unknown experiment parameter\(s\) \['fuse'\]; valid: method, stages"):
        experiment_config("smoke", fuse="add")


def test_every_ablation_uses_only_experiment_parameters():
    for configs in ABLATIONS.values():
        for params in configs.values():
            assert set(params) <= set(EXPERIMENT_PARAMS)
            experiment_config("smoke", **params)  # each one builds


def test_markdown_table_of_results_exact_text_with_scores_in_percent():
    rows = [{"run": "a", "method": "hrnet", "timesteps": [50, 150], "label_budget": 0, "miou": 0.41234, "oa": 0.8,
             "extra": "not shown"},
            {"run": "b", "method": "diffhrnet", "timesteps": [50], "label_budget": 2, "miou": None, "oa": 0.0}]
    assert markdown_table(rows, columns=("run", "method", "timesteps", "label_budget", "miou", "oa")) == (
        "| run | method | timesteps | label_budget | miou | oa |\n"
        "|---|---|---|---|---|---|\n"
        "| a | hrnet | [50, 150] | 0 | 41.2 | 80.0 |\n"
        "| b | diffhrnet | [50] | 2 | None | 0.0 |")
