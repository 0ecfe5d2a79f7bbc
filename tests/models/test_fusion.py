"""Fusion operators and the stage setting parser, on tiny tensors with known answers."""

import math

import pytest
import torch

from diffhrnet_lab.errors import ConfigError
from diffhrnet_lab.models.fusion import FusionPoint, parse_stages

EPS = 1 / math.sqrt(1 + 1e-5)  # an eval-mode BatchNorm with mean 0, variance 1, scale 1 multiplies by this


def _identity_adapters(p: FusionPoint) -> FusionPoint:
    """1x1 convs of weight 1 and BN scale 1: each adapter passes its (1-channel) stream through."""
    with torch.no_grad():
        for a in p.adapters:
            a.proj.weight.fill_(1.0)
            a.bn.weight.fill_(1.0)
    return p.eval()


def test_gated_weights_are_the_softmax_of_the_stream_logits():
    p = FusionPoint("gated", 18, [96, 96, 96, 96])
    torch.testing.assert_close(p.stream_weights(), torch.full((4,), 0.25))  # uniform until trained
    with torch.no_grad():
        p.stream_logits.copy_(torch.log(torch.tensor([1.0, 2.0, 3.0, 4.0])))
    torch.testing.assert_close(p.stream_weights(), torch.tensor([0.1, 0.2, 0.3, 0.4]))
    torch.testing.assert_close(FusionPoint("add", 18, [8, 8, 8]).stream_weights(), torch.ones(3))


def test_gated_output_is_branch_plus_half_the_weighted_mixture_while_the_gate_is_closed():
    """Gate conv at zero: sigmoid(0) = 0.5 everywhere, so out = x + 0.5 · Σ w_i · stream_i."""
    p = _identity_adapters(FusionPoint("gated", 1, [1, 1]))
    with torch.no_grad():
        p.stream_logits.copy_(torch.log(torch.tensor([1.0, 3.0])))  # weights 0.25, 0.75
    x = torch.tensor([[[[1.0, -2.0], [0.5, 4.0]]]])
    s1, s2 = torch.full((1, 1, 2, 2), 2.0), torch.tensor([[[[4.0, 0.0], [-4.0, 8.0]]]])
    with torch.no_grad():
        out = p(x, [s1, s2])
    torch.testing.assert_close(out, x + 0.5 * EPS * (0.25 * s1 + 0.75 * s2))


def test_add_sums_the_adapted_streams_onto_the_branch_and_starts_as_the_identity():
    x = torch.randn(2, 1, 3, 5)
    streams = [torch.randn(2, 1, 3, 5), torch.randn(2, 1, 3, 5)]
    p = FusionPoint("add", 1, [1, 1]).eval()
    with torch.no_grad():
        assert torch.equal(p(x, streams), x)  # zero-initialised BN scales: exactly the branch
        _identity_adapters(p)
        torch.testing.assert_close(p(x, streams), x + EPS * (streams[0] + streams[1]))


def test_adapter_average_pools_a_finer_stream_and_upsamples_a_coarser_one():
    p = _identity_adapters(FusionPoint("add", 1, [1]))
    fine = torch.arange(16.0).reshape(1, 1, 4, 4)
    with torch.no_grad():
        down = p(torch.zeros(1, 1, 2, 2), [fine])
        up = p(torch.zeros(1, 1, 4, 4), [torch.full((1, 1, 2, 2), 3.0)])
    torch.testing.assert_close(down, EPS * torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    torch.testing.assert_close(up, torch.full((1, 1, 4, 4), 3.0 * EPS))  # a constant stays constant


def test_concat_mixes_branch_and_streams_back_to_the_branch_width():
    p = FusionPoint("concat", 4, [6, 2, 9]).eval()
    assert p.mix[0].in_channels == 4 * 4 and p.mix[0].out_channels == 4
    out = p(torch.randn(1, 4, 8, 8), [torch.randn(1, 6, 8, 8), torch.randn(1, 2, 4, 4), torch.randn(1, 9, 16, 16)])
    assert out.shape == (1, 4, 8, 8) and (out >= 0).all()  # the mix ends in a ReLU


@pytest.mark.parametrize("given,expected", [("none", ()), ("late", (4,)), ("multistage", (1, 2, 3, 4)),
                                            ("2 4", (2, 4)), ("4,2, 2", (2, 4)), ([3, 1], (1, 3))])
def test_stage_settings_parse_to_sorted_unique_stages(given, expected):
    assert parse_stages(given) == expected


def test_bad_settings_list_valid_ones():
    with pytest.raises(ConfigError, match="none, late, multistage"):
        parse_stages("early")
    with pytest.raises(ConfigError, match="valid stages are 1, 2, 3, 4"):
        parse_stages([0, 5])
    with pytest.raises(ConfigError, match="concat, add, gated"):
        FusionPoint("max", 18, [32])


def test_stream_norm_standardises_each_channel_with_training_statistics_and_reuses_them_at_inference():
    from diffhrnet_lab.models.fusion import StreamNorm

    norm = StreamNorm([2, 1])
    a = torch.tensor([1.0, 3.0, 5.0, 7.0]).reshape(1, 1, 2, 2)
    s1 = torch.cat([a, 10 * a], 1)  # channel means 4 and 40, (biased) variances 5 and 500
    s2 = -a
    out = norm([s1, s2])
    z = (a - 4) / math.sqrt(5 + 1e-5)
    torch.testing.assert_close(out[0], torch.cat([z, (10 * a - 40) / math.sqrt(500 + 1e-5)], 1))
    torch.testing.assert_close(out[1], -z)
    norm.eval()  # running statistics after one batch, momentum 0.1: mean 0.4, var 0.9 + 0.1 * 20/3 (unbiased)
    got = norm([torch.zeros(1, 2, 1, 1), torch.zeros(1, 1, 1, 1)])
    torch.testing.assert_close(got[0].flatten(), torch.tensor([-0.4 / math.sqrt(0.9 + 0.1 * 20 / 3 + 1e-5),
                                                               -4.0 / math.sqrt(0.9 + 0.1 * 2000 / 3 + 1e-5)]))


def test_head_streams_project_and_resize_every_stream_to_the_head_resolution():
    from diffhrnet_lab.models.fusion import HeadStreams

    h = HeadStreams([1, 1], width=1).eval()
    with torch.no_grad():
        for p in h.proj:
            p[0].weight.fill_(1.0)
    fine = torch.arange(16.0).reshape(1, 1, 4, 4) - 5  # pooled to 2x2, then ReLU
    coarse = torch.full((1, 1, 1, 1), -3.0)  # negative: the ReLU zeroes it
    out = h([fine, coarse], torch.Size([2, 2]))
    assert out.shape == (1, 2, 2, 2) and h.width == 2
    torch.testing.assert_close(out[0, 0], EPS * torch.tensor([[0.0, 0.0], [5.5, 7.5]]))
    assert torch.equal(out[0, 1], torch.zeros(2, 2))


@pytest.mark.parametrize("size", [(96, 96), (50, 37)])
def test_pixel_classifier_on_block_resolution_streams_equals_it_on_upsampled_streams(size):
    """The first layer applied per stream at its own resolution, then resized, is the same map as
    resizing every stream to full resolution first (both are linear; bilinear weights sum to one),
    in training (batch statistics) and in evaluation."""
    from diffhrnet_lab.models.fusion import pixel_mlp, upsampled

    torch.manual_seed(0)
    h, w = size
    streams = [torch.randn(2, 24, -(-h // 16), -(-w // 16)), torch.randn(2, 16, -(-h // 8), -(-w // 8)),
               torch.randn(2, 8, h, w)]
    mlp = pixel_mlp(48, 5)
    for mode in (mlp.train, mlp.eval):
        mode()
        torch.testing.assert_close(mlp.classify_streams(streams, size, torch.float32),
                                   mlp(upsampled(streams, size, torch.float32)), atol=1e-4, rtol=1e-4)
    with pytest.raises(RuntimeError):  # streams that do not add up to the first layer's inputs
        mlp.classify_streams(streams[:2], size, torch.float32)


def test_pooled_streams_give_every_fusion_point_the_same_output_and_pool_once_per_size(monkeypatch):
    """Shared pooling (one pool per stream and branch size per forward) changes no output bit."""
    torch.manual_seed(0)
    streams = [torch.randn(2, 6, 16, 16), torch.randn(2, 3, 8, 8)]
    points = [FusionPoint("gated", 4, [6, 3]).eval() for _ in range(3)]
    xs = [torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.randn(2, 4, 4, 4)]
    with torch.no_grad():
        for p in points:
            for a in p.adapters:
                a.bn.weight.fill_(1.0)  # open the adapters: identity-started ones would hide a difference
        want = [p(x, streams) for p, x in zip(points, xs)]
        calls = []
        real = torch.nn.functional.adaptive_avg_pool2d
        monkeypatch.setattr(torch.nn.functional, "adaptive_avg_pool2d",
                            lambda f, size: calls.append((f.shape[-1], tuple(size))) or real(f, size))
        from diffhrnet_lab.models.fusion import PooledStreams

        pooled = PooledStreams(streams)
        got = [p(x, pooled) for p, x in zip(points, xs)]
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    # 16² → 8² once (shared by two points), 16² → 4² and 8² → 4² once; the 8² stream at 8² is not pooled
    assert sorted(calls) == [(8, (4, 4)), (16, (4, 4)), (16, (8, 8))]
