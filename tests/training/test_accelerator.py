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


# -- compilation, layout and copies ------------------------------------------------------------------
def test_compile_options_are_the_modes_own_plus_the_forced_nhwc_layout_and_real_inductor_settings():
    import torch._inductor.config as inductor

    from diffhrnet_lab.training.accelerator import COMPILE_MODES, compile_options

    assert compile_options("default", False) == {}
    assert compile_options("default", True) == {"force_layout_optimization": True}
    assert compile_options("reduce-overhead", True) == {"triton.cudagraphs": True, "force_layout_optimization": True}
    known = inductor.get_config_copy()
    for mode in COMPILE_MODES:
        assert set(compile_options(mode, True)) <= set(known), mode
    with pytest.raises(ConfigError, match="'reduce_overhead'"):
        compile_options("reduce_overhead", False)


def test_channels_last_is_by_hand_only_where_nothing_is_compiled_and_a_bad_mode_fails_on_a_cpu_too():
    from diffhrnet_lab.training.accelerator import compiled, eager_channels_last

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert eager_channels_last("default", True, cpu) and eager_channels_last("", True, gpu)
    assert not eager_channels_last("default", True, gpu) and not eager_channels_last("", False, cpu)
    net = torch.nn.Conv2d(3, 4, 3)
    assert compiled(net, "default", True, cpu) is net and compiled(net, "", False, gpu) is net
    with pytest.raises(ConfigError, match="max_autotune"):
        compiled(net, "max_autotune", False, cpu)


def test_ddpm_steps_with_channels_last_activations_train_as_the_nchw_ones(samples_dir):
    """The by-hand channels-last path (module and noisy input converted) is the same computation."""
    from diffhrnet_lab.config import profile_config, replace
    from diffhrnet_lab.training.accelerator import make_accelerator
    from diffhrnet_lab.training.pretrain import setup

    base = replace(profile_config("smoke").ddpm, batch_size=2, sample_size=32)
    pool = UnlabelledPool(samples_dir / "unlabelled", crop_size=32, seed=0)
    x = torch.stack([pool[i]["image"] for i in range(2)])
    runs = {}
    for cl in (False, True):
        tr = setup(replace(base, channels_last=cl), pool, make_accelerator("no")).prepare()
        assert tr.eager_nhwc is cl
        losses = [float(tr.step(x, k)) for k in range(3)]
        first = next(tr.unet.parameters())
        runs[cl] = (losses, first.detach().clone(), first.is_contiguous(memory_format=torch.channels_last))
    assert runs[True][2] and not runs[False][2]
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-4)
    assert torch.allclose(runs[True][1], runs[False][1], atol=1e-5)


def test_batches_go_to_the_device_without_a_blocking_copy(samples_dir):
    """A blocking copy of a pinned batch waits behind every queued kernel: a host sync per step."""
    from diffhrnet_lab.training.accelerator import make_accelerator, step_loader

    pool = UnlabelledPool(samples_dir / "unlabelled", crop_size=16, samples_per_epoch=4, seed=0)
    loader = step_loader(make_accelerator("no"), pool, 2, 0, 0, 2)
    assert loader._non_blocking is True
