"""AdaBN (``inference.adapt``): statistics re-estimated from the scored tiles, and put back after."""

import numpy as np
import torch
import torch.nn as nn

from diffhrnet_lab.inference.adapt import adapted_batchnorm, batchnorms, reestimate_batchnorm


class Net(nn.Module):
    """Dropout *before* a BatchNorm: were dropout left in train mode, a constant image would reach
    the BatchNorm with zeros in it and a variance above 0."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Dropout(0.5), nn.BatchNorm2d(3))
        self.head = nn.BatchNorm2d(3)

    def forward(self, x, streams=None):
        return self.head(self.backbone(x))


def constant_images(values, shape=(40, 50)):
    return [np.stack([np.full(shape, v, np.float32) for v in vals]) for vals in values]


def test_statistics_are_those_of_the_scored_tiles_and_dropout_stays_off():
    net = Net().eval()
    n = reestimate_batchnorm(net, constant_images([(1.0, 2.0, 3.0)]), crop=16, batch_size=2, batches=3)
    bn = net.backbone[1]
    assert n == 2
    torch.testing.assert_close(bn.running_mean, torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(bn.running_var, torch.zeros(3))
    assert not net.training and bn.momentum == 0.1  # put back as it was


def test_two_scenes_average_over_the_crops_drawn():
    """Batches of one crop each from two constant tiles: the running mean is the average of the
    batch means, i.e. the share of crops that came from each tile, replayed with the same seed."""
    net = Net().eval()
    reestimate_batchnorm(net, constant_images([(0.0,) * 3, (10.0,) * 3]), crop=8, batch_size=1, batches=20, seed=3)
    picks = np.random.default_rng(3)
    drawn = []
    for _ in range(20):
        i = int(picks.integers(2))
        picks.integers(0, 40 - 8 + 1), picks.integers(0, 50 - 8 + 1)  # the crop offsets drawn after the tile
        drawn.append(10.0 * i)
    torch.testing.assert_close(net.backbone[1].running_mean, torch.full((3,), float(np.mean(drawn))))


def test_within_limits_the_layers_and_the_with_block_restores_them():
    net = Net().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with adapted_batchnorm(net, constant_images([(5.0, 5.0, 5.0)]), crop=16, batches=2, within="backbone") as n:
        assert n == 1 and batchnorms(net, "backbone") == [net.backbone[1]]
        torch.testing.assert_close(net.backbone[1].running_mean, torch.full((3,), 5.0))
        torch.testing.assert_close(net.head.running_mean, before["head.running_mean"])  # outside ``within``
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k])
