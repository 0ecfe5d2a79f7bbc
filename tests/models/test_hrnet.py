"""HRNetV2 backbone and head; parity with timm (test-only dependency)."""

import pytest
import torch

from diffhrnet_lab.errors import ConfigError
from diffhrnet_lab.models.hrnet import TIMM_NAMES, VARIANTS, HRNetBackbone, HRNetV2Head, convert_timm_state_dict

timm = pytest.importorskip("timm")


def _timm(variant, in_chans=3):
    return timm.create_model(TIMM_NAMES[variant], pretrained=False, features_only=True, feature_location="",
                             in_chans=in_chans).eval()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_timm_parity_parameter_count(variant):
    ours, ref = HRNetBackbone(variant), _timm(variant)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("variant", ["w18_small", *(pytest.param(v, marks=pytest.mark.slow) for v in ("w18", "w32", "w48"))])
def test_timm_parity_converted_weights_give_the_same_branches(variant):
    torch.manual_seed(0)
    ref = _timm(variant)
    for m in ref.modules():  # non-trivial BN statistics, so eval-mode BN is exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ours = HRNetBackbone(variant).eval()
    ours.load_state_dict(convert_timm_state_dict(ref.state_dict(), ours))
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        a, b = ours(x), ref(x)[1:]  # timm's first feature is the stem
    assert len(a) == len(b) == 4
    for p, q in zip(a, b):
        assert p.shape == q.shape
        assert (p - q).abs().max().item() < 1e-4


def test_timm_parity_conversion_to_multispectral_input():
    ref = _timm("w18_small")
    ours = HRNetBackbone("w18_small", in_channels=4)
    sd = convert_timm_state_dict(ref.state_dict(), ours)
    assert sd["stem.conv1.weight"].shape[1] == 4
    ours.load_state_dict(sd)


def test_timm_parity_wrong_variant_is_named():
    with pytest.raises(ConfigError, match="w32"):
        convert_timm_state_dict(_timm("w18").state_dict(), HRNetBackbone("w32"))


@pytest.mark.parametrize("variant", [v if v == "w18_small" else pytest.param(v, marks=pytest.mark.slow) for v in VARIANTS])
def test_branch_shapes_and_head_for_every_variant(variant):
    net = HRNetBackbone(variant, in_channels=5)
    ys = net(torch.zeros(1, 5, 64, 96))
    assert [y.shape[-2:] for y in ys] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert [y.shape[1] for y in ys] == net.out_channels
    head = HRNetV2Head(net.out_channels, 6)
    assert head(ys).shape == (1, 6, 16, 24)


def test_published_sizes_with_fcn_head():
    """DESIGN.md: HRNetV2 + FCN head, 6 classes: W18-Small-v2 3.94 M, W18 9.64 M, W48 65.85 M."""
    for variant, millions in (("w18_small", 3.94), ("w18", 9.64), ("w48", 65.85)):
        net = HRNetBackbone(variant)
        n = sum(p.numel() for p in net.parameters()) + sum(p.numel() for p in HRNetV2Head(net.out_channels, 6).parameters())
        assert round(n / 1e6, 2) == millions


def test_unknown_variant():
    with pytest.raises(ConfigError, match="w18_small, w18, w32, w48"):
        HRNetBackbone("w64")
