import pytest
import torch

from diffhrnet_lab.features.extractor import FeatureExtractor
from diffhrnet_lab.ddpm.unet import build_scheduler, build_unet
from diffhrnet_lab.errors import ConfigError
from diffhrnet_lab.models.fusion import FusionPoint, parse_stages
from diffhrnet_lab.models.segmenters import DDPMPixelClassifier, DiffHRNet


@pytest.fixture(scope="module")
def fx():
    torch.manual_seed(0)
    return FeatureExtractor(build_unet("tiny", 4, 64), build_scheduler(), (50, 250), (0, 1))


@pytest.mark.parametrize("stages", ["none", "late", "multistage", "2 4"])
@pytest.mark.parametrize("fusion", ["concat", "add", "gated"])
def test_output_shape_for_every_stage_setting_and_operator(fx, stages, fusion):
    m = DiffHRNet(7, 4, "w18_small", fx, stages, fusion)
    y = m(torch.randn(2, 4, 45, 70))
    assert y.shape == (2, 7, 45, 70)
    expected = {"none": 0, "late": 4, "multistage": 1 + 2 + 3 + 4, "2 4": 2 + 4}[stages]
    assert len(m.points) == expected


def test_add_and_gated_start_as_plain_hrnet(fx):
    """Zero-initialised fusion: before training, Diff-HRNet's output equals its HRNet's."""
    torch.manual_seed(1)
    x = torch.randn(1, 4, 64, 64)
    for op in ("add", "gated"):
        m = DiffHRNet(5, 4, "w18_small", fx, "multistage", op).eval()
        plain = m.head(m.backbone(x))
        fused = m.head(m.backbone(x, lambda s, bs: [m.points[f"s{s}b{i}"](b, m.ddpm_streams(x)) for i, b in enumerate(bs)]))
        assert (plain - fused).abs().max().item() <= 1e-5, op


def test_frozen_ddpm_gets_no_gradient_and_is_not_checkpointed(fx):
    m = DiffHRNet(3, 4, "w18_small", fx, "late", "concat")
    m(torch.randn(2, 4, 32, 32)).sum().backward()
    assert all(p.grad is None for p in m.ddpm.parameters())
    assert any(p.grad is not None for p in m.points.parameters())
    assert not any(k.startswith("ddpm.") for k in m.trainable_state_dict())


def test_finetuned_ddpm_gets_gradients_and_is_checkpointed():
    torch.manual_seed(0)
    fx = FeatureExtractor(build_unet("tiny", 4, 64), build_scheduler(), (50,), (0,))
    # concat: add/gated start with zero adapter scales, so the DDPM's gradient is zero at step 0
    m = DiffHRNet(3, 4, "w18_small", fx, "late", "concat", finetune_ddpm=True)
    m(torch.randn(2, 4, 32, 32)).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.ddpm.parameters())
    assert any(k.startswith("ddpm.") for k in m.trainable_state_dict())


def test_gated_weights_are_a_distribution_over_streams(fx):
    p = FusionPoint("gated", 18, [96, 96, 96, 96])
    w = p.stream_weights()
    assert w.shape == (4,) and torch.isclose(w.sum(), torch.tensor(1.0))


def test_ddpm_pixel_classifier_shape(fx):
    m = DDPMPixelClassifier(6, fx)
    assert m(torch.randn(2, 4, 40, 56)).shape == (2, 6, 40, 56)


def test_bad_settings_list_valid_ones():
    with pytest.raises(ConfigError, match="none, late, multistage"):
        parse_stages("early")
    with pytest.raises(ConfigError, match="valid stages are 1, 2, 3, 4"):
        parse_stages([0, 5])
    with pytest.raises(ConfigError, match="concat, add, gated"):
        FusionPoint("max", 18, [32])
