"""Feature distillation of HRNet's backbone from DDPM streams (training.distill), on tiny problems."""

import torch
import torch.nn.functional as F

from diffhrnet_lab.fileio import load_tensors
from diffhrnet_lab.models.pretrained import load_timm_backbone
from diffhrnet_lab.models.segmenters import DiffHRNet
from diffhrnet_lab.training.distill import DistillConfig, distill_backbone, stream_stats


def test_stream_stats_are_per_channel_over_every_tile_at_the_coarsest_streams_size():
    fine = torch.stack([torch.full((4, 4), 1.0), torch.full((4, 4), 2.0)])  # 2 channels at stride 2
    coarse = torch.full((1, 2, 2), 5.0)  # 1 channel at stride 4
    other = [torch.stack([torch.full((4, 4), 3.0), torch.full((4, 4), 2.0)]), torch.full((1, 2, 2), -5.0)]
    mean, std = stream_stats([[fine, coarse], other])
    torch.testing.assert_close(mean, torch.tensor([2.0, 2.0, 0.0]))
    torch.testing.assert_close(std, torch.tensor([1.0, 0.0, 5.0]), atol=1e-5, rtol=0)


def test_distillation_learns_a_function_of_the_image_and_its_weights_start_fine_tuning(tmp_path):
    """Streams that are the (smooth) image itself, pooled, so HRNet can learn them: the loss falls
    below 1, what predicting the standardised targets' mean scores, and the saved backbone is what
    ``model.init_timm`` loads into a segmenter."""
    torch.manual_seed(0)
    images = [F.interpolate(torch.randn(1, 3, 8, 8), scale_factor=8, mode="bilinear")[0].numpy() for _ in range(2)]
    feats = [[F.avg_pool2d(torch.from_numpy(im)[None], 2)[0], F.avg_pool2d(torch.from_numpy(im)[None], 4)[0]]
             for im in images]
    summary = distill_backbone(images, feats, [2, 4], tmp_path / "d", cfg=DistillConfig(steps=60, batch=4, crop=64),
                               progress=False)
    assert summary["first_loss"] > 1.0 and summary["last_loss"] < 0.9
    saved = load_tensors(tmp_path / "d" / "backbone.safetensors")
    model = DiffHRNet(5, 3)
    load_timm_backbone(model.backbone, str(tmp_path / "d" / "backbone.safetensors"))
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, saved[k]), k


def test_distillation_refuses_missing_features_and_coarse_streams(tmp_path):
    import numpy as np
    import pytest

    from diffhrnet_lab.errors import DataError

    im = np.zeros((3, 32, 32), np.float32)
    with pytest.raises(DataError, match="1 image\\(s\\), 0 feature set"):
        distill_backbone([im], [], [4], tmp_path / "x")
    with pytest.raises(DataError, match="strides \\[8\\]"):
        distill_backbone([im], [[torch.zeros(2, 4, 4)]], [8], tmp_path / "x")
