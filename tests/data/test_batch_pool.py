"""The shared batch pool: workers write into buffers allocated once; the batches must be the ones a
fresh buffer per batch gives, every slot reused, and a batch kept past its slot's reuse refused."""

from __future__ import annotations

import pytest
import torch

from diffhrnet_lab.data.batch_pool import BatchPool, PooledBatch, SlotIndices, resolve, slots_for
from diffhrnet_lab.data.datasets import LabelledTiles, UnlabelledPool, WholeBatch, find_pairs
from diffhrnet_lab.errors import DataError
from diffhrnet_lab.training.accelerator import PREFETCH_FACTOR, make_accelerator, step_loader


@pytest.mark.parametrize("workers,prefetch,want", [(1, 4, 7), (2, 4, 12), (4, 4, 20), (3, 2, 9)])
def test_slots_cover_what_a_loader_and_its_consumer_hold_in_a_multiple_of_the_workers(workers, prefetch, want):
    s = slots_for(workers, prefetch)
    assert s == want and s % workers == 0 and s >= workers * prefetch + 3


def _tiles(make_labelled, **kw):
    root = make_labelled(4, size=(40, 48))
    return LabelledTiles(find_pairs(root), "samples", crop_size=32, augment=True, samples_per_epoch=8, seed=5,
                         compact_masks=True, photometric=0.2, **kw)


@pytest.mark.parametrize("kind", ["labelled", "unlabelled"])
def test_pooled_loader_gives_the_batches_of_fresh_buffers_while_slots_are_reused(make_labelled, kind):
    """30 batches through 2 workers and 12 slots: every slot is refilled more than twice.  The two
    batches the loop still holds when it asks for the next must stay intact (what the slot count is
    for), and every batch must equal the one a fresh buffer per batch gives.  Fine-tuning's tiles
    and the DDPM's unlabelled pool alike."""
    if kind == "labelled":
        ds = _tiles(make_labelled)
    else:
        root = make_labelled(4, size=(40, 48))
        ds = UnlabelledPool(root / "images", crop_size=32, augment=True, samples_per_epoch=8, seed=5)
        ds.finish = resolve  # what the DDPM loop calls on each batch
    acc = make_accelerator("no")
    fresh = step_loader(acc, ds, 4, 0, 0, 30, num_workers=2, batch_pool=False)
    pooled = step_loader(acc, ds, 4, 0, 0, 30, num_workers=2)
    assert pooled.batch_sampler.pool.slots == slots_for(2, PREFETCH_FACTOR) == 12
    held: list[tuple[dict, dict]] = []
    kinds = set()
    for a, b in zip(fresh, pooled):
        kinds.add(type(b))
        want, got = ds.finish(a), ds.finish(b)
        assert got["id"] == want["id"] and got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in ("image", "mask") if k in want)
        held = (held + [(want, got)])[-2:]
        for w, g in held:
            assert all(torch.equal(g[k], w[k]) for k in ("image", "mask") if k in w)
    assert kinds == {PooledBatch}  # the pool served every batch: the comparison above is not fresh vs fresh


def test_a_batch_kept_until_its_slot_is_refilled_is_refused(make_labelled):
    ds = _tiles(make_labelled)
    loader = step_loader(make_accelerator("no"), ds, 4, 0, 0, 30, num_workers=2)
    kept = []
    with pytest.raises(DataError, match="clone"):
        for b in loader:
            kept.append(ds.finish(b))
    assert len(kept) == loader.batch_sampler.pool.slots  # refused at the first refill, not before


def test_no_pool_without_workers_or_for_layouts_built_item_by_item(make_labelled):
    acc = make_accelerator("no")
    ds = _tiles(make_labelled)
    assert step_loader(acc, ds, 4, 0, 0, 3, num_workers=0).batch_sampler.pool is None
    compact = _tiles(make_labelled, compact_images=True)
    assert compact.compact and compact.batch_shapes(4) is None
    assert step_loader(acc, compact, 4, 0, 0, 3, num_workers=2).batch_sampler.pool is None


def test_a_worker_that_cannot_see_the_pool_builds_the_batch_as_before(make_labelled):
    """Under the ``spawn`` start method the registry is empty in the worker: the batch is built in a
    fresh buffer, with the same values; a wrong batch size is not written into the pool either."""
    ds = _tiles(make_labelled)
    want = ds.__getitems__([3, 1, 6, 2])
    assert isinstance(want, WholeBatch)
    unknown = ds.__getitems__(SlotIndices([3, 1, 6, 2], key=-1, slot=0))
    assert isinstance(unknown, WholeBatch) and torch.equal(unknown.whole["image"], want.whole["image"])
    pool = BatchPool(3, ds.batch_shapes(2))  # room for batches of 2, asked for 4
    wrong = ds.__getitems__(pool.tag([3, 1, 6, 2], 0))
    assert isinstance(wrong, WholeBatch) and torch.equal(wrong.whole["mask"], want.whole["mask"])
    fits = BatchPool(3, ds.batch_shapes(4))
    written = ds.__getitems__(fits.tag([3, 1, 6, 2], 4))
    assert isinstance(written, PooledBatch) and written["slot"] == 1
    assert torch.equal(ds.finish(written)["image"], want.whole["image"])


def test_unlabelled_whole_batches_equal_the_items_collated(make_labelled):
    from torch.utils.data import default_collate

    root = make_labelled(3, size=(40, 48))
    pool = UnlabelledPool(root / "images", crop_size=24, augment=True, samples_per_epoch=6, seed=2)
    indices = [5, 0, 13, 2]  # 13: two epochs on
    want = default_collate([pool[i] for i in indices])
    got = pool.__getitems__(indices).whole
    assert got["id"] == want["id"] and torch.equal(got["image"], want["image"])


def test_workers_started_by_spawn_write_into_the_pool_too(make_labelled):
    """``spawn`` (macOS, Windows; ``forkserver`` is Python 3.14's default on Linux) shares nothing
    by inheritance: the pool reaches each worker through ``worker_init_fn``, as shared memory."""
    from torch.utils.data import DataLoader

    from diffhrnet_lab.data.datasets import collate_batch

    ds = _tiles(make_labelled)
    pool = BatchPool(3, ds.batch_shapes(4))
    batches = [[3, 1, 6, 2], [0, 5, 7, 4], [9, 8, 12, 10], [11, 13, 15, 14]]
    loader = DataLoader(ds, batch_sampler=[pool.tag(b, k) for k, b in enumerate(batches)], num_workers=1,
                        collate_fn=collate_batch, worker_init_fn=pool.worker_init, multiprocessing_context="spawn",
                        prefetch_factor=1)
    got = []
    for b in loader:
        assert isinstance(b, PooledBatch)
        got.append(ds.finish(b)["image"].clone())
    want = [collate_batch(ds.__getitems__(b))["image"] for b in batches]
    assert all(torch.equal(g, w) for g, w in zip(got, want))
