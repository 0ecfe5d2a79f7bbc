"""Batch buffers in shared memory, allocated once per loader and reused: the CPU loaders' input cost.

A DataLoader worker hands every batch over in a new shared-memory segment.  On the 2-core
development machine a float32 batch of 16 crops of 512² (50 MB, 12,800 pages) cost about 24 ms of
kernel time to map before a pixel was written, and the main process mapped the same pages again to
read them (BENCHMARKS.md, issue 15).  A :class:`BatchPool` is allocated (and its pages touched)
once, before the loader's workers start; the worker writes batch ``k`` into slot ``k mod S`` and
sends back the slot's number, and the main process reads the slot it already has mapped.

Why reuse is safe: a DataLoader dispatches at most ``prefetch_factor * num_workers`` batches
beyond the one it last yielded (``_MultiProcessingDataLoaderIter._try_put_index``); accelerate's
loader holds one more, read ahead; the training loop holds the current batch and, while it asks for
the next, the previous one.  :func:`slots_for` gives more slots than that, a multiple of the number
of workers, so each worker keeps writing into the same few slots.  A loop that keeps a batch longer
would see it overwritten: :meth:`BatchPool.take` refuses rather than let that pass silently.

Workers find the pool in a registry: :meth:`BatchPool.worker_init` (the loader's
``worker_init_fn``) puts it there in each worker, whatever the start method (``fork``; ``spawn``,
macOS's and Windows' default; ``forkserver``, Python 3.14's on Linux), the buffers travelling as
shared memory.  A worker that does not find it builds the batch as before: slower, never wrong.
"""

from __future__ import annotations

import itertools
import math
import weakref
from typing import Sequence

import torch

from ..errors import DataError

_POOLS: weakref.WeakValueDictionary[int, BatchPool] = weakref.WeakValueDictionary()
_IN_WORKER: dict[int, BatchPool] = {}  # a worker's pools: nothing else there keeps them alive
_KEYS = itertools.count()


def slots_for(num_workers: int, prefetch_factor: int) -> int:
    """Slots enough for every batch a loader and its consumer can hold at once (module docstring),
    rounded up to a multiple of ``num_workers``: batch ``k`` goes to worker ``k mod W``, so each
    worker then writes into its own ``S / W`` slots."""
    held = num_workers * prefetch_factor + 3
    return num_workers * math.ceil(held / num_workers)


class SlotIndices(list):
    """A batch's sample numbers, with the pool (``key``) and the slot its worker writes into."""

    def __init__(self, indices: Sequence[int], key: int, slot: int):
        super().__init__(indices)
        self.key, self.slot = key, slot

    def __reduce__(self):  # through the worker's index queue, slot and all
        return SlotIndices, (list(self), self.key, self.slot)


class BatchPool:
    """``slots`` batches of the tensors ``shapes`` names (``{name: (batch shape, dtype)}``) in shared
    memory, zero-filled at once so that no write or read afterwards maps a fresh page."""

    def __init__(self, slots: int, shapes: dict[str, tuple[tuple[int, ...], torch.dtype]]):
        if slots < 1:
            raise ValueError(f"a batch pool needs at least one slot, got {slots}")
        self.slots, self.key = slots, next(_KEYS)
        self.buffers = {name: torch.zeros((slots, *shape), dtype=dtype).share_memory_()
                        for name, (shape, dtype) in shapes.items()}
        self._handed: list[list[weakref.ref]] = [[] for _ in range(slots)]
        _POOLS[self.key] = self

    def __getstate__(self) -> dict:  # to a worker: the buffers (as shared memory), not the hand-out record
        return {"slots": self.slots, "key": self.key, "buffers": self.buffers}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._handed = [[] for _ in range(self.slots)]

    def worker_init(self, worker_id: int) -> None:
        """The loader's ``worker_init_fn``: register the pool in the worker."""
        _IN_WORKER[self.key] = self
        _POOLS[self.key] = self

    def tag(self, indices: Sequence[int], position: int) -> SlotIndices:
        """The indices of a loader's ``position``-th batch, sent to the slot it may use."""
        return SlotIndices(indices, self.key, position % self.slots)

    def take(self, slot: int) -> dict[str, torch.Tensor]:
        """The main process's view of ``slot``, which a worker has just filled.  Refuses if what was
        handed out from that slot ``S`` batches ago is still referenced: its pixels are now the new
        batch's."""
        if any(ref() is not None for ref in self._handed[slot]):
            raise DataError(f"a training batch was kept for {self.slots} batches after it was handed out; its "
                            "shared buffer has been refilled since. Keep a copy instead (batch['image'].clone()).")
        views = {name: b[slot] for name, b in self.buffers.items()}
        self._handed[slot] = [weakref.ref(v) for v in views.values()]
        return views


def worker_slot(indices: Sequence[int]) -> tuple[dict[str, torch.Tensor], int, int] | None:
    """Inside a worker: the buffers to write ``indices``' batch into, the pool's key and the slot, or
    ``None`` (indices without a slot, or a pool this process cannot see: build the batch anew)."""
    if not isinstance(indices, SlotIndices):
        return None
    pool = _POOLS.get(indices.key)
    if pool is None or any(b.shape[1] != len(indices) for b in pool.buffers.values()):
        return None
    return {name: b[indices.slot] for name, b in pool.buffers.items()}, indices.key, indices.slot


class PooledBatch(dict):
    """What a worker sends back for a batch written into a pool: the pool's key, the slot and the
    small per-item values (ids).  :func:`resolve` turns it into the batch in the main process."""


def resolve(batch):
    """A :class:`PooledBatch` as the tensors of its slot (plus its other values); anything else as is."""
    if not isinstance(batch, PooledBatch):
        return batch
    pool = _POOLS.get(batch["pool"])
    if pool is None:
        raise DataError("a pooled batch outlived its loader; iterate the loader that produced it")
    rest = {k: v for k, v in batch.items() if k not in ("pool", "slot")}
    return {**pool.take(batch["slot"]), **rest}
