"""What every training loop shares: the Accelerator, and batches that depend on the step alone.

Two properties make runs exact (same numbers after a resume, on 1 or N processes):

* the batches of step ``k`` are fixed by ``(seed, k)``: epoch ``e`` visits the samples in a
  permutation seeded by ``(seed, e)``, and every crop is seeded by ``(seed, e, index)``;
* the configured batch is the *global* batch, split across processes (``split_batches``).

Speed: one DataLoader serves every step of a loop (:func:`step_loader`).  Building one per
epoch, as the diffusers example does, restarts the worker processes every time; with a small pool
(36 tiles, batch 32) an epoch is a single step, so the loop spent its time forking workers.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from torch.utils.data import BatchSampler, DataLoader

from ..data.batch_pool import BatchPool, slots_for
from ..data.datasets import collate_batch
from ..errors import ConfigError


def make_accelerator(mixed_precision: str = "auto", log_with: str | None = None,
                     project_dir: str | None = None) -> Accelerator:
    """The Accelerator of every training loop: the configured batch is the *global* batch, split
    across processes (``split_batches``), so 1 and N processes train on the same numbers.  It must go
    through ``DataLoaderConfiguration``: accelerate 1.x ignores ``Accelerator(split_batches=...)``.
    ``non_blocking``: a batch in pinned memory goes to the GPU without the host waiting for the
    copy, which would otherwise wait behind every kernel already queued (a host sync per step)."""
    return Accelerator(mixed_precision=resolve_mixed_precision(mixed_precision),
                       dataloader_config=DataLoaderConfiguration(split_batches=True, non_blocking=True),
                       log_with=log_with or None, project_dir=project_dir)


def _native_bf16() -> bool:
    """bf16 in hardware (Ampere and later).  ``is_bf16_supported()`` alone also says yes where bf16 is
    only emulated (a T4), which is slower than float32 there."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # older torch: no emulation flag
        return torch.cuda.is_bf16_supported()


def resolve_mixed_precision(choice: str) -> str:
    """``auto``: bf16 where the GPU has it, else full precision.  ``auto-fp16`` (the ``colab``
    profile): the same, but fp16 on a GPU without bf16 (a T4), whose tensor cores run fp16 only."""
    if choice in ("auto", "auto-fp16"):
        if not torch.cuda.is_available():
            return "no"
        if _native_bf16():
            return "bf16"
        return "fp16" if choice == "auto-fp16" else "no"
    if choice not in ("no", "bf16", "fp16"):
        raise ConfigError(f"mixed_precision '{choice}'; choose auto, auto-fp16, no, bf16 or fp16")
    return choice


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_options(mode: str, channels_last: bool) -> dict:
    """Inductor's options for ``torch.compile`` in ``mode``; with ``channels_last``, its layout
    optimisation forced on: every convolution inside the graph runs on NHWC activations while the
    module's parameters and inputs stay NCHW.  On the H100 this made the compiled base U-Net step
    1.12x faster (3.56 against 3.19 steps/s), where converting the module and its input to
    channels-last made it slower (2.76): inductor then copied tensors between layouts (BENCHMARKS.md)."""
    if mode not in COMPILE_MODES:
        raise ConfigError(f"compile '{mode}'; choose '' (off) or one of {', '.join(COMPILE_MODES)}")
    from torch._inductor import list_mode_options

    return {**list_mode_options(mode), **({"force_layout_optimization": True} if channels_last else {})}


def compiled(module: torch.nn.Module, mode: str, channels_last: bool, device: torch.device):
    """``module`` compiled in ``mode`` on CUDA devices; itself elsewhere or with ``mode`` empty (on
    CPUs compiling costs more than it saves)."""
    if not mode:
        return module
    options = compile_options(mode, channels_last)  # a mistyped mode fails on a laptop too
    return torch.compile(module, options=options) if device.type == "cuda" else module


def eager_channels_last(mode: str, channels_last: bool, device: torch.device) -> bool:
    """Whether the module and its inputs are converted to channels-last by hand: asked for, and not
    compiled (under compilation inductor's layout optimisation does it, :func:`compile_options`)."""
    return channels_last and not (mode and device.type == "cuda")


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


class StepBatchSampler(BatchSampler):
    """The global batches of steps ``start .. end-1``, across as many epochs as that takes.

    Items are *global sample numbers* ``epoch · n + index``: the dataset decodes the epoch from
    them (``data.datasets._Seeded``), so workers need no shared epoch counter and one loader can
    run through epochs.  A real :class:`BatchSampler` (with ``batch_size``) so that accelerate
    shards each global batch across processes."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, end: int, pool: BatchPool | None = None):
        self.n, self.batch_size, self.seed, self.start, self.end = n, batch_size, seed, start, end
        self.pool = pool
        self.drop_last = True
        self.steps_per_epoch = n // batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError(f"{n} sample(s) per epoch is fewer than one batch of {batch_size}")

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    def __iter__(self):
        step = self.start
        while step < self.end:
            epoch, offset = divmod(step, self.steps_per_epoch)
            order = epoch_order(self.n, self.seed, epoch)
            for b in range(offset, self.steps_per_epoch):
                if step >= self.end:
                    return
                batch = [epoch * self.n + i for i in order[b * self.batch_size:(b + 1) * self.batch_size]]
                yield batch if self.pool is None else self.pool.tag(batch, step - self.start)
                step += 1


PREFETCH_FACTOR = 4


def step_loader(accelerator: Accelerator, dataset, batch_size: int, seed: int, start: int, end: int,
                num_workers: int = 0, pin_memory: bool | None = None, batch_pool: bool | None = None) -> DataLoader:
    """One DataLoader for the steps ``start .. end-1`` of a loop, prepared by accelerate.

    The loader gets its own generator: a DataLoader iterator otherwise draws a seed from the global
    RNG that dropout also uses, and a resumed run would then drop out different units.  Workers
    (``num_workers``) start once per loop; pinned memory on CUDA makes the copy to the device
    asynchronous.  ``batch_pool`` (default: on the CPU, with workers, one process, and a dataset
    that builds whole batches): workers write into shared buffers allocated once for the loop
    (:mod:`..data.batch_pool`) instead of a fresh segment per batch; the batches then go through
    the dataset's ``finish``, which every training loop calls."""
    pool = None
    shapes = getattr(dataset, "batch_shapes", lambda b: None)(batch_size)
    if batch_pool is None:
        batch_pool = accelerator.device.type == "cpu" and accelerator.num_processes == 1
    if batch_pool and num_workers and shapes is not None:
        pool = BatchPool(slots_for(num_workers, PREFETCH_FACTOR), shapes)
    sampler = StepBatchSampler(len(dataset), batch_size, seed, start, end, pool)
    pin = accelerator.device.type == "cuda" if pin_memory is None else pin_memory
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin,
                        collate_fn=collate_batch, persistent_workers=False,
                        prefetch_factor=PREFETCH_FACTOR if num_workers else None,
                        worker_init_fn=pool.worker_init if pool is not None else None,
                        generator=torch.Generator().manual_seed(seed))
    return accelerator.prepare_data_loader(loader, device_placement=True)


def epoch_loader(accelerator: Accelerator, dataset, batch_size: int, seed: int, epoch: int, offset: int = 0,
                 num_workers: int = 0, batch_pool: bool | None = None) -> DataLoader:
    """The batches of one epoch from batch ``offset`` on: :func:`step_loader` over that epoch's steps."""
    spe = len(dataset) // batch_size
    return step_loader(accelerator, dataset, batch_size, seed, epoch * spe + offset, (epoch + 1) * spe, num_workers,
                       batch_pool=batch_pool)
