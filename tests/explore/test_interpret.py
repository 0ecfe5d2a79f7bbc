"""The notebooks' computed interpretations on small inputs whose answer is known, both directions of
every comparison."""

import numpy as np
import pytest

from diffhrnet_lab.explore.interpret import (ablation_summary, class_balance, compare, ddpm_summary,
                                             finetune_summary, probe_summary, snr_crossing)
from diffhrnet_lab.inference.metrics import scores


def test_compare_picks_the_word_from_the_gap_and_the_noise():
    assert compare(45.0, 40.0, 2.0) == "above"
    assert compare(35.0, 40.0, 2.0) == "below"
    assert compare(41.5, 40.0, 2.0) == "within noise of"
    assert compare(38.5, 40.0, 2.0) == "within noise of"


def test_class_balance_names_the_most_frequent_and_the_rarest_class_with_their_shares():
    text = class_balance(["road", "low_vegetation", "car", "water"], [300, 600, 100, 0])
    assert "**Low vegetation** is the most frequent class (60.0 % of labelled pixels)" in text
    assert "**car** is the rarest present (10.0 %)" in text
    assert "6 times as frequent" in text
    assert "Absent from these masks: water." in text
    assert "lose at most 10.0 points of overall accuracy" in text
    assert "1/3 of the mean IoU over the 3 classes present" in text
    with pytest.raises(ValueError, match="no labelled pixels"):
        class_balance(["a"], [0])


def test_snr_crossing_is_the_first_step_where_alpha_bar_drops_below_a_half():
    assert snr_crossing([0.99, 0.8, 0.51, 0.49, 0.1]) == 3
    with pytest.raises(ValueError):
        snr_crossing([0.9, 0.6])


def test_ddpm_summary_orders_the_schedules_and_judges_the_denoiser_both_ways():
    alphas = {"linear": [0.9, 0.6, 0.4, 0.1], "cosine": [0.95, 0.8, 0.7, 0.45]}
    good = ddpm_summary(alphas, trained_loss=0.05, untrained_loss=1.0)
    assert "t = 2 (linear) and t = 3 (cosine)" in good
    assert "The cosine schedule keeps the signal 1 steps longer than the linear one." in good
    assert "0.050, 20 times lower than an untrained U-Net's (1.000)" in good
    assert "has learned what these tiles look like" in good
    assert "lower than, but not half of," in ddpm_summary(alphas, 0.8, 1.0)
    bad = ddpm_summary(alphas, 1.2, 1.0)
    assert "no lower than" in bad and "do not fuse" in bad


def test_probe_summary_finds_best_and_worst_and_the_trend_per_block():
    probe = {(50, 0): 0.50, (500, 0): 0.30, (50, 1): 0.40, (500, 1): 0.45, (50, 2): 0.20, (500, 2): 0.205}
    text = probe_summary(probe)
    assert "best stream is t = 50, block 0 (probe mIoU 50.0 %)" in text
    assert "worst is t = 50, block 2 (20.0 %)" in text
    assert "Block 0: from t = 50 to t = 500 the probe falls (50.0 % → 30.0 %)" in text
    assert "Block 1: from t = 50 to t = 500 the probe rises (40.0 % → 45.0 %)" in text
    assert "Block 2: from t = 50 to t = 500 the probe stays within 1 point(s)" in text


def test_probe_summary_reads_scores_objects_as_well_as_floats():
    cm = np.array([[3, 1], [0, 4]])
    s = scores(cm)
    assert f"{100 * s.miou:.1f} %" in probe_summary({(50, 0): s})


def test_finetune_summary_names_the_three_scenes_and_compares_with_the_baseline():
    scenes = {"train": "Tile_2", "select": "Tile_3", "test": "Tile_1"}
    text = finetune_summary({"HRNet": 0.30, "Diff-HRNet": 0.40, "MLP": 0.20, "Other": 0.31}, "HRNet", scenes,
                            best_steps={"HRNet": 150, "Diff-HRNet": 300}, noise=5.0)
    assert "Trained on **Tile_2**, best step selected on **Tile_3**, scored on **Tile_1**." in text
    assert "HRNet scored 30.0 % mIoU on Tile_1." in text
    assert "Diff-HRNet scored 40.0 % mIoU on Tile_1, 10.0 points above HRNet." in text
    assert "MLP scored 20.0 % mIoU on Tile_1, 10.0 points below HRNet." in text
    assert "Other scored 31.0 % mIoU on Tile_1, within noise of HRNet (+1.0 points)." in text
    assert "Best steps: HRNet 150, Diff-HRNet 300." in text
    with pytest.raises(ValueError, match="baseline"):
        finetune_summary({"A": 0.1}, "B", scenes)
    two = finetune_summary({"HRNet": 0.30}, "HRNet", {"train": "Tile_2", "test": "Tile_1"})
    assert two.startswith("Trained on **Tile_2**, last step scored, nothing selected, scored on **Tile_1**.")


def test_ablation_summary_compares_every_run_with_the_reference():
    rows = [{"run": "stages-late", "miou": 0.42}, {"run": "stages-multistage", "miou": 0.30},
            {"run": "stages-none", "miou": 0.36}]
    text = ablation_summary(rows, reference="stages-none", noise=5.0)
    assert "Best: **stages-late** (42.0 % test mIoU); worst: **stages-multistage** (30.0 %)" in text
    assert "on the scenes that chose it (test_fraction=0)" in text  # these rows name no test scenes
    honest = [{**r, "test_groups": ["scene_03"]} for r in rows]
    assert "test scenes that neither training nor the choice of step saw" in ablation_summary(honest, "stages-none")
    assert "a spread of 12.0 points" in text
    assert "stages-late is above stages-none (+6.0 points)" in text
    assert "stages-multistage is below stages-none (-6.0 points)" in text
    assert "within noise of" in ablation_summary(rows[1:], reference="stages-none", noise=10.0)
    with pytest.raises(ValueError, match="reference"):
        ablation_summary(rows, reference="nope")
