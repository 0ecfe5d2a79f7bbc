import math

import numpy as np
import pytest
import torch

from diffhrnet_lab.inference.metrics import confusion_matrix, scores


def test_hand_computed_example_with_ignore():
    # truth / prediction over 10 pixels, 3 classes, 255 ignored
    truth = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 255, 255])
    pred = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0, 1, 2])
    cm = confusion_matrix(pred, truth, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
    s = scores(cm, ["a", "b", "c"])
    # class a: TP 2, FP 1 (c→a), FN 1 → IoU 2/4, F1 4/6
    # class b: TP 1, FP 1 (a→b), FN 1 → IoU 1/3, F1 2/4
    # class c: TP 2, FP 1 (b→c), FN 1 → IoU 2/4, F1 4/6
    assert s.iou == pytest.approx([0.5, 1 / 3, 0.5])
    assert s.f1 == pytest.approx([2 / 3, 0.5, 2 / 3])
    assert s.miou == pytest.approx((0.5 + 1 / 3 + 0.5) / 3)
    assert s.oa == pytest.approx(5 / 8)  # the two ignored pixels count nowhere


def test_absent_class_is_nan_and_left_out_of_the_mean():
    cm = np.array([[3, 0, 0], [0, 1, 0], [0, 0, 0]])
    s = scores(cm)
    assert math.isnan(s.iou[2]) and s.miou == pytest.approx(1.0)


def test_matches_torchmetrics_on_random_data():
    from torchmetrics.classification import MulticlassJaccardIndex

    rng = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 5, (4, 32, 32), generator=rng)
    truth = torch.randint(0, 5, (4, 32, 32), generator=rng)
    truth[:, :3] = 255
    ours = scores(confusion_matrix(pred, truth, 5)).iou
    ref = MulticlassJaccardIndex(5, average="none", ignore_index=255)(pred, truth)
    assert ours == pytest.approx(ref.tolist(), abs=1e-6)


def test_bad_target_class_is_reported():
    with pytest.raises(ValueError, match="class 7 outside 0..2"):
        confusion_matrix(torch.zeros(3, dtype=torch.long), torch.tensor([0, 7, 1]), 3)
