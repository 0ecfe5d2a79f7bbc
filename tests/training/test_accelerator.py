"""Step-indexed data loading: the batches of step k depend on (seed, k) alone."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from diffhrnet_lab.data.datasets import LabelledTiles, UnlabelledPool, find_pairs
from diffhrnet_lab.errors import ConfigError
from diffhrnet_lab.training.accelerator import StepBatchSampler, epoch_loader, epoch_order


def _expected_batches(n: int, batch: int, seed: int, epochs: int) -> list[list[int]]:
    """Step after step: each epoch's permutation as global sample numbers ``epoch·n + i``, cut into
    whole batches (the incomplete last batch of an epoch is dropped)."""
    out = []
    for e in range(epochs):
        flat = [e * n + i for i in epoch_order(n, seed, e)]
        out += [flat[b * batch:(b + 1) * batch] for b in range(n // batch)]
    return out


def test_epoch_order_is_a_reproducible_permutation_new_each_epoch_and_seed():
    orders = {(s, e): epoch_order(12, s, e) for s in (0, 1) for e in (0, 1, 2)}
    assert all(sorted(o) == list(range(12)) for o in orders.values())
    assert len({tuple(o) for o in orders.values()}) == 6
    assert epoch_order(12, 1, 2) == orders[(1, 2)]


def test_step_batches_are_the_epoch_permutations_across_an_epoch_boundary_from_mid_epoch():
    n, batch, seed = 10, 3, 7  # 3 steps per epoch; sample 9 of each epoch's order is left out
    expected = _expected_batches(n, batch, seed, epochs=3)
    assert expected[3][0] >= n and expected[2][-1] < n  # step 3 is the first of epoch 1
    sampler = StepBatchSampler(n, batch, seed, start=2, end=7)
    got = list(sampler)
    assert len(sampler) == 5 and got == expected[2:7]
    assert list(StepBatchSampler(n, batch, seed, 0, 9)) == expected
    assert sampler.batch_size == batch and sampler.drop_last
    assert len(StepBatchSampler(n, batch, seed, 4, 4)) == 0 and list(StepBatchSampler(n, batch, seed, 4, 4)) == []
    with pytest.raises(ConfigError, match="2 sample\\(s\\) per epoch is fewer than one batch of 3"):
        StepBatchSampler(2, 3, seed, 0, 1)


def test_a_global_sample_number_is_the_item_of_its_epoch(make_labelled, samples_dir):
    """Item ``e·n + i`` equals item ``i`` after ``set_epoch(e)``: the crops and flips of epoch e."""
    ds = LabelledTiles(find_pairs(make_labelled(3, size=(40, 48))), "samples", crop_size=24, augment=True,
                       samples_per_epoch=5, seed=2)
    pool = UnlabelledPool(samples_dir / "unlabelled", crop_size=16, samples_per_epoch=6, seed=1)
    for d in (ds, pool):
        n = len(d)
        global_items = {(e, i): d[e * n + i] for e in (0, 2) for i in (0, n - 1)}
        for (e, i), item in global_items.items():
            d.set_epoch(e)
            local = d[i]
            assert torch.equal(item["image"], local["image"]) and item["id"] == local["id"]
            if "mask" in item:
                assert torch.equal(item["mask"], local["mask"])
            d.set_epoch(0)
        assert not torch.equal(global_items[(0, 0)]["image"], global_items[(2, 0)]["image"])


def test_each_epoch_loader_draws_new_crops_and_resumes_mid_epoch(samples_dir):
    """Regression: accelerate's loader resets ``dataset.set_epoch`` to its own counter on iteration."""
    pool = UnlabelledPool(samples_dir / "unlabelled", crop_size=16, samples_per_epoch=8, seed=0)
    acc = Accelerator(cpu=True)
    epochs = [torch.cat([b["image"] for b in epoch_loader(acc, pool, 4, 0, e)]) for e in range(3)]
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])
    again = torch.cat([b["image"] for b in epoch_loader(acc, pool, 4, 0, 1)])
    assert torch.equal(again, epochs[1])
    tail = torch.cat([b["image"] for b in epoch_loader(acc, pool, 4, 0, 1, offset=1)])
    assert torch.equal(tail, epochs[1][4:])
