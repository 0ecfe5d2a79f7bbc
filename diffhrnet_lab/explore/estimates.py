"""How long will this cell take, and will it fit? Time and peak memory of a stage, before it runs.

A notebook prints :func:`estimate` before each long cell, so that a student on a Colab T4 learns that
a cell needs 25 minutes (or would not fit in 16 GB) before starting it, not after.  Nothing here
allocates real memory or computes anything: every model is built on PyTorch's ``meta`` device,
where tensors have shapes and dtypes but no storage, and one training step is run there.

* **Time** = steps × FLOPs of one step / throughput.  FLOPs of one step (forward + backward, at the
  stage's real crop size and batch) are counted by ``torch.utils.flop_counter`` on the ``meta``
  device, so a paper-scale step costs no more to count than a tiny one.  Throughput is an assumed
  :data:`UTILISATION` (25 %) of the card's dense fp16/bf16 peak (:data:`PEAK_FLOPS`), or a measured
  figure for a 2-core CPU.  Validation, data loading and start-up are not counted: read the result
  as the order of magnitude, good to a factor of about two.
* **Peak memory** = what autograd keeps for backward (every tensor passed to a saved-tensor hook
  during the forward, each storage once, parameters excluded) + bytes per parameter for what the
  optimiser holds (:data:`TRAIN_BYTES_PER_PARAM`: float32 weights, gradients and Adam's two moments;
  4 more for the DDPM's EMA) + 4 bytes per frozen parameter.  Under mixed precision the model is
  counted in float16 and the activations multiplied by :data:`AUTOCAST_ALLOWANCE`, because autocast
  keeps normalisation and softmax outputs in float32.  The caching allocator's slack is not
  counted: keep the estimate ~15 % under the card's memory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..config import ProfileConfig
from ..errors import ConfigError

STAGES = ("pretrain", "finetune")
# Dense fp16/bf16 tensor-core peaks (FLOP/s, vendor data sheets) and the share of it a training loop
# of convolutions, norms and small attention blocks reaches; "cpu" is a measured 2-core laptop figure.
PEAK_FLOPS = {"t4": 65e12, "l4": 121e12, "v100": 125e12, "a100": 312e12, "h100": 989e12, "h200": 989e12}
UTILISATION = 0.25
CPU_FLOPS = 40e9  # float32, 2 cores (this kit's CI machine); the notebooks' quick profile is sized by it
TRAIN_BYTES_PER_PARAM = 16  # float32 weight 4 + gradient 4 + Adam exp_avg 4 + exp_avg_sq 4
EMA_BYTES_PER_PARAM = 4
FROZEN_BYTES_PER_PARAM = 4
AUTOCAST_ALLOWANCE = 1.3
GB = 1e9


@dataclass(frozen=True)
class Estimate:
    """One stage's estimate; ``str()`` is the line a notebook prints before the cell."""

    stage: str
    device: str
    seconds: float
    peak_bytes: float
    steps: int
    step_flops: float
    activation_bytes: float  # saved for backward, one step
    fixed_bytes: float  # weights, gradients, optimiser state, EMA, frozen weights

    def __str__(self) -> str:
        minutes = self.seconds / 60
        when = f"{minutes:.0f} min" if minutes >= 1 else f"{self.seconds:.0f} s"
        return (f"estimate for {self.stage} on {self.device}: ~{when} ({self.steps} steps × "
                f"{self.step_flops / 1e12:.2f} TFLOP), peak memory ~{self.peak_bytes / GB:.1f} GB "
                f"({self.activation_bytes / GB:.1f} GB activations + {self.fixed_bytes / GB:.2f} GB weights and optimiser)")


def throughput(device: str) -> float:
    """Assumed FLOP/s of ``device``: ``cpu``, or a card name from :data:`PEAK_FLOPS` (``t4``, ``a100``...)."""
    key = device.lower()
    if key == "cpu":
        return CPU_FLOPS
    if key not in PEAK_FLOPS:
        raise ConfigError(f"unknown device '{device}' for estimates; choose cpu or one of {', '.join(PEAK_FLOPS)}")
    return PEAK_FLOPS[key] * UTILISATION


def current_device() -> str:
    """The card this kernel runs on (``t4``, ``a100``...), ``cuda`` when unknown, else ``cpu``."""
    if not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name(0).lower()
    return next((k for k in PEAK_FLOPS if k in name), "t4")  # an unknown card: assume the slowest we know


def mixed_precision_on(choice: str, device: str) -> bool:
    """Whether a run with ``mixed_precision=choice`` uses 16-bit activations on ``device``."""
    if device == "cpu":
        return choice in ("bf16", "fp16")
    if choice == "auto":
        return device != "t4" and device != "v100"  # auto is bf16 where supported, else float32
    return choice in ("bf16", "fp16", "auto-fp16")


def count_step(build: Callable[[], nn.Module], inputs: Callable[[nn.Module], tuple], loss: Callable[..., torch.Tensor],
               half: bool = False) -> tuple[float, float, int, int]:
    """FLOPs and saved-for-backward bytes of one forward + backward on the ``meta`` device.

    ``build`` makes the model (called under ``torch.device("meta")``), ``inputs(model)`` its
    arguments, ``loss(output)`` a scalar.  Returns (FLOPs, activation bytes, trainable parameters,
    frozen parameters).  Parameters seen by the hook are not activations: they are counted per
    parameter instead.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build()
        if half:
            model = model.half()
        args = inputs(model)
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage()._cdata  # views share a storage: count it once
        if key not in params:
            saved[key] = t.untyped_storage().nbytes()
        return t

    with FlopCounterMode(display=False) as counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(*args)
        loss(out).backward()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return float(counter.get_total_flops()), float(sum(saved.values())), trainable, frozen


_COUNTS: dict[tuple, tuple[float, float, int, int]] = {}


def _cached(key: tuple, *args, **kw) -> tuple[float, float, int, int]:
    """:func:`count_step` once per model and input shape: a notebook (and a test) asks several times."""
    if key not in _COUNTS:
        _COUNTS[key] = count_step(*args, **kw)
    return _COUNTS[key]


def _meta_bundle(cfg: ProfileConfig, bands: int):
    from ..data.io import BandStats
    from ..ddpm.unet import DDPMBundle, build_scheduler, build_unet

    unet = build_unet(cfg.ddpm.preset, bands, cfg.ddpm.sample_size)
    stats = BandStats(low=[0.0] * bands, high=[255.0] * bands)
    return DDPMBundle(unet=unet, scheduler=build_scheduler(cfg.ddpm.beta_schedule, cfg.ddpm.num_train_timesteps),
                      stats=stats, meta={})


def estimate(cfg: ProfileConfig, stage: str, device: str | None = None, bands: int = 4) -> Estimate:
    """Seconds and peak memory of ``stage`` (``pretrain``: notebook 01; ``finetune``: one run of 03/04)
    with ``cfg``'s settings on ``device`` (default: this kernel's card, or ``cpu``).

    ``pretrain`` is the profile's DDPM U-Net on ``ddpm.sample_size`` crops, global batch
    ``ddpm.batch_size``, ``ddpm.steps`` steps.  ``finetune`` is ``model.method`` on ``data.crop_size``
    crops, batch ``data.batch_size``, ``train.steps`` steps, with the profile's DDPM preset frozen
    inside (the one notebook 01 trains).  See the module docstring for what is and is not counted.
    """
    device = (device or current_device()).lower()
    rate = throughput(device)
    if stage == "pretrain":
        dc = cfg.ddpm
        half = mixed_precision_on(dc.mixed_precision, device)
        from ..ddpm.unet import build_unet

        size = dc.sample_size
        flops, act, trainable, frozen = _cached(
            ("pretrain", dc.preset, bands, size, half),
            lambda: build_unet(dc.preset, bands, size),
            lambda m: (torch.zeros(1, bands, size, size, dtype=next(m.parameters()).dtype),
                       torch.zeros(1, dtype=torch.long)),
            lambda out: out.sample.float().pow(2).mean(), half=half)
        batch, steps = dc.batch_size, dc.steps
        fixed = trainable * (TRAIN_BYTES_PER_PARAM + EMA_BYTES_PER_PARAM) + frozen * FROZEN_BYTES_PER_PARAM
    elif stage == "finetune":
        from ..models.segmenters import build_segmenter

        mc = cfg.model
        half = mixed_precision_on(cfg.train.mixed_precision, device)
        size = cfg.data.crop_size
        # no feature cache in the estimate: the frozen DDPM runs in every step (the notebooks' default)
        fc = dataclasses.replace(cfg.features, cache=False)
        flops, act, trainable, frozen = _cached(
            ("finetune", dataclasses.astuple(mc), fc.timesteps, fc.blocks, cfg.ddpm.preset, bands, size, half),
            lambda: build_segmenter(mc, fc, 7, bands, None if mc.method == "hrnet" else _meta_bundle(cfg, bands)),
            lambda m: (torch.zeros(1, bands, size, size, dtype=next(m.parameters()).dtype), None),
            lambda out: out.float().logsumexp(1).mean(), half=half)
        batch, steps = cfg.data.batch_size, cfg.train.steps
        fixed = trainable * TRAIN_BYTES_PER_PARAM + frozen * FROZEN_BYTES_PER_PARAM
    else:
        raise ConfigError(f"unknown stage '{stage}'; choose one of {', '.join(STAGES)}")
    activations = act * batch * (AUTOCAST_ALLOWANCE if half else 1.0)
    step_flops = flops * batch
    return Estimate(stage=stage, device=device, seconds=steps * step_flops / rate, peak_bytes=activations + fixed,
                    steps=steps, step_flops=step_flops, activation_bytes=activations, fixed_bytes=fixed)
