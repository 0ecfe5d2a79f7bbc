"""``diffhrnet-lab bench pipeline``: is a loop bound by the model or by what feeds it?

For DDPM pretraining and for fine-tuning it runs the real loop body (``DDPMTrainer.step``,
``finetune.train_step``) twice, side by side in one process:

* fed by the real input pipeline (``training.accelerator.step_loader``: crops, flips, workers,
  the copy to the device): ``steps_per_s``;
* fed one batch that already sits on the device: ``model_only_steps_per_s``;

the two in alternating blocks of steps (:func:`_paired`), so that drift during the measurement
hits both.

``overhead`` is their ratio (1.0: the input costs nothing).  ``input_ms_per_step`` is the median
time from asking the loader for the next batch to having it on the device, loader construction
included; with a tiny stand-in model (``input``) it shows the input pipeline alone at the full
profile's settings, which a slow model would otherwise hide.  For whole-tile features it compares
:func:`features.tile_cache.compute_tiled` with the U-Net's own batched forward over the same
windows (``vs_forward``).  On a GPU it adds model FLOP utilisation: FLOPs of one step counted by
``torch.utils.flop_counter`` over the step time and the card's dense bf16 peak.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import DDPMConfig, ProfileConfig, dubai_dir, profile_config, replace, samples_dir

# Dense bf16 tensor-core peaks (FLOP/s) of cards people run this on (vendor data sheets; SXM parts).
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12,
             "T4": 65e12, "V100": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bf16_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK.items() if k in name), None)


def step_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (forward and backward), counted by PyTorch's flop counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _flops_or_none(fn: Callable[[], Any]) -> int | None:
    """FLOPs of a step, or ``None`` where the counter cannot follow it (a compiled graph)."""
    try:
        return step_flops(fn)
    except Exception:  # the figure is optional; the timing it would annotate is not
        return None


def _loop(loader_factory: Callable[[], Any], step: Callable[[Any, int], Any], device: torch.device, steps: int,
          warmup: int) -> tuple[float, list[float]]:
    """Run ``steps`` steps after ``warmup``; return steps/s and the per-step input waits (s)."""
    t_build = time.perf_counter()
    it = iter(loader_factory())
    waits, t0 = [], None
    for k in range(warmup + steps):
        if k == warmup:
            _sync(device)
            t0 = time.perf_counter()
        t = t_build if k == 0 else time.perf_counter()
        batch = next(it)
        waits.append(time.perf_counter() - t)
        step(batch, k)
    _sync(device)
    return steps / (time.perf_counter() - t0), waits


def _model_only(batch, step: Callable[[Any, int], Any], device: torch.device, steps: int, warmup: int) -> float:
    for k in range(warmup):
        step(batch, k)
    _sync(device)
    t0 = time.perf_counter()
    for k in range(steps):
        step(batch, k)
    _sync(device)
    return steps / (time.perf_counter() - t0)


def _paired(loader_factory: Callable[[], Any], batch, step: Callable[[Any, int], Any], device: torch.device,
            steps: int, warmup: int, blocks: int = 3) -> tuple[float, float, list[float]]:
    """The loop fed by the loader and the same loop fed ``batch`` (already on the device), timed in
    alternating blocks of ``steps // blocks`` steps: whatever drifts during the measurement (the
    other core's load, the optimiser's state, the allocator) hits both alike, so ``overhead`` is not
    an artefact of which one ran second.  Returns loader steps/s, model-only steps/s and the input
    waits (s) of every loader step, the first including the loader's construction."""
    t_build = time.perf_counter()
    it = iter(loader_factory())
    waits = []

    def fed(k: int) -> None:
        t = t_build if k == 0 else time.perf_counter()
        b = next(it)
        waits.append(time.perf_counter() - t)
        step(b, k)

    for k in range(warmup):
        fed(k)
        step(batch, k)
    per = max(1, steps // blocks)
    t_loop = t_model = 0.0
    k = warmup
    for _ in range(blocks):
        _sync(device)
        t0 = time.perf_counter()
        for j in range(per):
            fed(k + j)
        _sync(device)
        t1 = time.perf_counter()
        for j in range(per):
            step(batch, k + j)
        _sync(device)
        t_loop += t1 - t0
        t_model += time.perf_counter() - t1
        k += per
    return blocks * per / t_loop, blocks * per / t_model, waits


def _pool_dir() -> Path:
    d = dubai_dir()
    return d / "images" if d is not None else samples_dir() / "unlabelled"


def _labelled_root() -> tuple[Path, str]:
    d = dubai_dir()
    return (d, "dubai") if d is not None else (samples_dir() / "labelled", "samples")


# -- DDPM pretraining ------------------------------------------------------------------------------
def bench_ddpm(cfg: DDPMConfig, steps: int, warmup: int, input_only: bool = False, legacy: bool = False,
               batch_pool: bool | None = None) -> dict[str, Any]:
    """DDPM training fed by its loader against the same steps on one batch already on the device;
    ``batch_pool`` as :func:`bench_finetune`'s."""
    from ..data.batch_pool import resolve
    from ..data.datasets import UnlabelledPool
    from ..training.accelerator import epoch_loader, make_accelerator, step_loader
    from ..training.pretrain import setup

    acc = make_accelerator(cfg.mixed_precision)
    pool = UnlabelledPool(_pool_dir(), crop_size=cfg.sample_size, augment=True, seed=cfg.seed)
    pool.samples_per_epoch = max(len(pool.paths), cfg.batch_size)  # a pool smaller than a batch still fills one
    out: dict[str, Any] = {"preset": cfg.preset, "batch": cfg.batch_size, "size": cfg.sample_size,
                           "num_workers": cfg.num_workers, "pool_tiles": len(pool.paths), "device": acc.device.type}
    if input_only:
        model_step = lambda batch, k: batch["image"].sum()  # noqa: E731  (the data must be materialised)
    else:
        tr = setup(cfg, pool, acc).prepare()
        model_step = lambda batch, k: tr.step(batch["image"], k)  # noqa: E731
    end = warmup + steps
    spe = len(pool) // cfg.batch_size

    def per_epoch():
        """Before this kit's step loader: a new DataLoader (and new workers, and a fresh buffer per
        batch) for every epoch."""
        for e in range(-(-end // spe)):
            yield from epoch_loader(acc, pool, cfg.batch_size, cfg.seed, e, 0, cfg.num_workers, batch_pool=False)

    def loader():
        return map(resolve, step_loader(acc, pool, cfg.batch_size, cfg.seed, 0, end, cfg.num_workers,
                                        batch_pool=batch_pool))

    if legacy and not input_only:
        # ... and the loss read back (a host sync) after every step.
        fast_step = model_step
        model_step = lambda batch, k: fast_step(batch, k).item()  # noqa: E731
    if legacy or input_only:
        sps, waits = _loop(per_epoch if legacy else loader, model_step, acc.device, steps, warmup)
    else:
        batch = resolve(next(iter(step_loader(acc, pool, cfg.batch_size, cfg.seed, 0, 1, 0))))
        sps, mo, waits = _paired(loader, batch, model_step, acc.device, steps, warmup)
    out.update(steps_per_s=round(sps, 3), input_ms_per_step=round(1000 * statistics.median(waits), 2),
               input_ms_first_step=round(1000 * waits[0], 1))
    if legacy:
        return out
    if input_only:
        _, w2 = _loop(per_epoch, model_step, acc.device, steps, warmup)
        out["input_ms_per_step_loader_per_epoch"] = round(1000 * statistics.median(w2), 2)
        return out
    out.update(model_only_steps_per_s=round(mo, 3), overhead=round(mo / sps, 3))
    peak = bf16_peak(acc.device)
    flops = _flops_or_none(lambda: _unet_fwd_bwd(tr, batch["image"])) if peak else None
    if flops:
        out.update(flops_per_step=flops, mfu=round(flops * sps / peak, 4), mfu_model_only=round(flops * mo / peak, 4))
    return out


def _unet_fwd_bwd(tr, x0: torch.Tensor) -> None:
    """The model FLOPs of a DDPM step: the U-Net's forward and backward on the batch (the optimizer
    and EMA updates are memory-bound and not counted, as MFU conventionally does not)."""
    t = torch.randint(0, tr.cfg.num_train_timesteps, (x0.shape[0],), device=x0.device)
    with tr.accelerator.autocast():
        loss = tr.forward(x0, t).sample.float().pow(2).mean()
    loss.backward()
    tr.optimizer.zero_grad(set_to_none=True)


# -- fine-tuning -----------------------------------------------------------------------------------
def bench_finetune(cfg: ProfileConfig, steps: int, warmup: int, input_only: bool = False,
                   compact: bool | None = None, batch_pool: bool | None = None) -> dict[str, Any]:
    """Fine-tuning fed by its loader against the same steps on one batch already on the device.
    ``compact``: 8-bit crops finished on the device (fine-tuning's choice off the CPU when ``None``);
    ``batch_pool``: workers write into buffers allocated once (``step_loader``'s choice when ``None``)."""
    from ..data.datasets import LabelledTiles, compact_images_for, find_pairs
    from ..models.segmenters import build_segmenter
    from ..training.accelerator import compiled, eager_channels_last, make_accelerator, step_loader
    from ..training.finetune import train_step

    dc, tc = cfg.data, cfg.train
    acc = make_accelerator(tc.mixed_precision)
    root, scheme = _labelled_root()
    compact = compact_images_for(acc.device) if compact is None else compact
    ds = LabelledTiles(find_pairs(root), scheme, crop_size=dc.crop_size, augment=True,
                       samples_per_epoch=max(dc.batch_size, len(find_pairs(root))), seed=tc.seed, compact_masks=True,
                       compact_images=compact)
    out: dict[str, Any] = {"model": "input only" if input_only else f"hrnet {cfg.model.variant}", "batch": dc.batch_size,
                           "size": dc.crop_size, "num_workers": tc.num_workers, "tiles": len(ds.pairs),
                           "device": acc.device.type, "compact_images": ds.compact}
    if input_only:
        model_step = lambda batch, k: batch["image"].sum()  # noqa: E731
    else:
        torch.manual_seed(0)
        model = build_segmenter(replace(cfg.model, method="hrnet"), cfg.features, ds.scheme.num_classes, ds.stats.bands)
        if eager_channels_last(tc.compile, tc.channels_last, acc.device):
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=tc.lr)
        model, opt = acc.prepare(model, opt)
        model = compiled(model, tc.compile, tc.channels_last, acc.device)
        model.train()
        model_step = lambda batch, k: train_step(model, batch, opt, acc, tc.lr, None, ds.scheme.ignore_index)  # noqa: E731
    loader = lambda: map(ds.finish, step_loader(acc, ds, dc.batch_size, tc.seed, 0, warmup + steps,  # noqa: E731
                                                tc.num_workers, batch_pool=batch_pool))
    if input_only:
        sps, waits = _loop(loader, model_step, acc.device, steps, warmup)
    else:
        batch = ds.finish(next(iter(step_loader(acc, ds, dc.batch_size, tc.seed, 0, 1, 0))))
        sps, mo, waits = _paired(loader, batch, model_step, acc.device, steps, warmup)
    out.update(steps_per_s=round(sps, 3), input_ms_per_step=round(1000 * statistics.median(waits), 2),
               input_ms_first_step=round(1000 * waits[0], 1))
    if input_only:
        return out
    out.update(model_only_steps_per_s=round(mo, 3), overhead=round(mo / sps, 3))
    peak = bf16_peak(acc.device)
    flops = _flops_or_none(lambda: model_step(batch, 0)) if peak else None
    if flops:
        out.update(flops_per_step=flops, mfu=round(flops * sps / peak, 4), mfu_model_only=round(flops * mo / peak, 4))
    return out


# -- whole-tile features ---------------------------------------------------------------------------
@torch.inference_mode()
def compute_tiled_legacy(fx, image: torch.Tensor, window: int = 128, overlap: float = 0.25,
                         batch_size: int = 8) -> dict:
    """Whole-tile features the way the kit computed them before (the baseline of ``vs_legacy`` and
    the reference the tests hold :func:`features.tile_cache.compute_tiled` to): every window's
    features copied to float32 CPU accumulators one at a time, blend weights made per batch and
    key, 8 windows per forward."""
    import math

    from ..data.tiling import blend_weights, window_starts

    s = fx.stride
    window = max(s, window - window % s)
    padded, h, w = fx._prepare(image[None])
    H, W = padded.shape[-2:]
    wy, wx = min(window, H), min(window, W)
    step = max(s, int(round(window * (1 - overlap))) // s * s)
    boxes = [(y, x) for y in window_starts(H, wy, step) for x in window_starts(W, wx, step)]
    acc, norm = {}, {}
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i:i + batch_size]
        feats = fx.compute(torch.stack([padded[0, :, y:y + wy, x:x + wx] for y, x in chunk]))
        for key, f in feats.items():
            bs = fx.info[key[1]]["stride"]
            if key not in acc:
                acc[key] = torch.zeros((f.shape[1], H // bs, W // bs))
            wgt = blend_weights(wy // bs, wx // bs)
            for (y, x), fi in zip(chunk, f):
                acc[key][:, y // bs:(y + wy) // bs, x // bs:(x + wx) // bs] += fi.float().cpu() * wgt
                if key[0] == fx.timesteps[0]:
                    n = norm.setdefault(key[1], torch.zeros((H // bs, W // bs)))
                    n[y // bs:(y + wy) // bs, x // bs:(x + wx) // bs] += wgt
    return {(t, b): (a / norm[b])[:, : math.ceil(h / fx.info[b]["stride"]), : math.ceil(w / fx.info[b]["stride"])]
            for (t, b), a in acc.items()}


def bench_tile_features(cfg: ProfileConfig, repeats: int = 3, preset: str | None = None,
                        legacy: bool = False, bf16: bool = False) -> dict[str, Any]:
    """Whole-tile extraction of one real tile against the U-Net's batched forward over its windows."""
    from ..data.datasets import find_pairs
    from ..data.io import read_tile
    from ..data.tiling import window_starts
    from ..ddpm.unet import build_scheduler, build_unet
    from ..features.extractor import FeatureExtractor
    from ..features.tile_cache import cache_bytes_per_pixel, compute_tiled, windows_per_batch

    fc = cfg.features
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    root, _ = _labelled_root()
    pair = find_pairs(root)[0]
    tile = read_tile(pair.image)
    # Speed does not depend on the weights: an untrained U-Net of the preset, sized to the tile's bands.
    from ..data.io import compute_band_stats

    torch.manual_seed(0)
    preset = preset or "tiny"
    stats = compute_band_stats([pair.image])
    unet, sched, which = build_unet(preset, tile.bands, 64).to(device).eval(), build_scheduler(), f"untrained {preset}"
    image = torch.from_numpy(stats.normalise(tile.image)).to(device)
    fx = FeatureExtractor(unet, sched, fc.timesteps, fc.blocks, noise_seed=fc.noise_seed)
    h, w = image.shape[-2:]
    mpix = h * w / 1e6

    s = fx.stride
    window = fc.cache_window - fc.cache_window % s
    padded, _, _ = fx._prepare(image[None])
    H, W = padded.shape[-2:]
    step = max(s, int(round(window * 0.75)) // s * s)
    boxes = [(y, x) for y in window_starts(H, min(window, H), step) for x in window_starts(W, min(window, W), step)]
    bs = windows_per_batch(fx, min(window, H), min(window, W))
    windows = torch.stack([padded[0, :, y:y + window, x:x + window] for y, x in boxes])

    def tiled():
        return {k: v.cpu() for k, v in compute_tiled(fx, image, window=window, batch_size=bs, bf16=bf16,
                                                      out_dtype=torch.float16).items()}

    def forward_only():
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            for i in range(0, len(boxes), bs):
                fx.compute(windows[i:i + bs])
        _sync(device)

    tiled(), forward_only()
    t_tiled, t_fwd = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        tiled()
        t_tiled.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        forward_only()
        t_fwd.append(time.perf_counter() - t0)
    a, b = statistics.median(t_tiled), statistics.median(t_fwd)
    extra = {}
    if legacy:
        t0 = time.perf_counter()
        ref = compute_tiled_legacy(fx, image, window=window)
        extra["legacy_seconds_per_tile"] = round(time.perf_counter() - t0, 3)
        extra["speedup_vs_legacy"] = round(extra["legacy_seconds_per_tile"] / a, 2)
        new = compute_tiled(fx, image, window=window, batch_size=bs)
        extra["max_abs_diff_vs_legacy"] = max((new[k].float().cpu() - ref[k]).abs().max().item() for k in ref)
    return {**extra, "ddpm": which, "bf16": bf16, "tile": pair.id, "tile_px": [h, w], "windows": len(boxes), "window": window,
            "windows_per_batch": bs, "device": device.type, "seconds_per_tile": round(a, 3),
            "mpix_per_s": round(mpix / a, 3), "forward_mpix_per_s": round(mpix / b, 3), "vs_forward": round(b / a, 3),
            "cache_bytes_per_pixel": {"float16": cache_bytes_per_pixel(fx), "uint8": cache_bytes_per_pixel(fx, "uint8")}}


SETTINGS = {"smoke": (3, 1), "quick": (12, 3), "full": (30, 5)}  # timed steps, warm-up steps
# input-only loops at the full profile's settings: a median of 10 waits moved by 5 ms between runs
# (BENCHMARKS.md); 30 cost a few seconds more
INPUT_STEPS = 30


def bench_pipeline(profile: str = "quick") -> dict[str, Any]:
    """The pipeline figures of one profile, plus the input pipeline alone at the full profile's input
    settings (batch 32 / 16, 4 workers, the Dubai pool when ``$DHL_DUBAI_DIR`` is set)."""
    cfg = profile_config(profile)
    full = profile_config("full")
    steps, warmup = SETTINGS[profile]
    on_gpu = torch.cuda.is_available()
    ddpm_cfg = cfg.ddpm if profile != "full" or on_gpu else replace(cfg.ddpm, preset="tiny")
    result: dict[str, Any] = {"profile": profile, "device": torch.cuda.get_device_name(0) if on_gpu else "cpu",
                              "threads": torch.get_num_threads(), "torch": torch.__version__}
    result["ddpm"] = bench_ddpm(ddpm_cfg, steps, warmup)
    result["finetune"] = bench_finetune(cfg, steps, warmup)
    full_ddpm = replace(full.ddpm, mixed_precision=ddpm_cfg.mixed_precision)
    result["ddpm_input_full_settings"] = bench_ddpm(full_ddpm, max(steps, INPUT_STEPS), 2, input_only=True)
    if not on_gpu:
        result["ddpm_input_full_settings_fresh_buffers"] = bench_ddpm(full_ddpm, max(steps, INPUT_STEPS), 2,
                                                                      input_only=True, batch_pool=False)
    full_ft = dataclasses.replace(cfg, data=replace(cfg.data, batch_size=full.data.batch_size,
                                                    crop_size=full.data.crop_size),
                                  train=replace(cfg.train, num_workers=full.train.num_workers))
    result["finetune_input_full_settings"] = bench_finetune(full_ft, max(steps, INPUT_STEPS), 2, input_only=True)
    if not on_gpu:  # the other transports, for the record: 8-bit crops normalised in the main process, and
        # float crops in a fresh shared buffer per batch (what the batch pool replaced on the CPU)
        n = max(steps, INPUT_STEPS)
        result["finetune_input_full_settings_compact"] = bench_finetune(full_ft, n, 2, input_only=True, compact=True)
        result["finetune_input_full_settings_fresh_buffers"] = bench_finetune(full_ft, n, 2, input_only=True,
                                                                              batch_pool=False)
    result["features"] = bench_tile_features(cfg, preset=ddpm_cfg.preset)
    result["targets"] = {
        "ddpm_overhead_le_1_15": result["ddpm"]["overhead"] <= 1.15,
        "finetune_overhead_le_1_15": result["finetune"]["overhead"] <= 1.15,
        "ddpm_input_ms_le_15": result["ddpm_input_full_settings"]["input_ms_per_step"] <= 15,
        "finetune_input_ms_le_15": result["finetune_input_full_settings"]["input_ms_per_step"] <= 15,
        "features_vs_forward_ge_0_8": result["features"]["vs_forward"] >= 0.8,
    }
    return result


def bench_cache_vs_inline(cfg: ProfileConfig, steps: int, warmup: int, preset: str | None = None) -> dict[str, Any]:
    """A Diff-HRNet training step with the DDPM run inside the step against one fed cached features
    (what ``features.cache`` does): which is faster decides the default on this device."""
    from ..ddpm.unet import build_scheduler, build_unet
    from ..features.extractor import FeatureExtractor
    from ..models.segmenters import DiffHRNet
    from ..training.accelerator import make_accelerator
    from ..training.finetune import train_step

    dc, tc, fc, mc = cfg.data, cfg.train, cfg.features, cfg.model
    acc = make_accelerator(tc.mixed_precision)
    torch.manual_seed(0)
    preset = preset or cfg.ddpm.preset
    fx = FeatureExtractor(build_unet(preset, 3, dc.crop_size).to(acc.device).eval(), build_scheduler(),
                          fc.timesteps, fc.blocks)
    model = DiffHRNet(6, 3, mc.variant, fx, mc.stages, mc.fusion, head_dropout=0.0, feature_norm=mc.feature_norm)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model, opt = acc.prepare(model, opt)
    model.train()
    x = torch.rand(dc.batch_size, 3, dc.crop_size, dc.crop_size, device=acc.device) * 2 - 1
    y = torch.randint(0, 6, (dc.batch_size, dc.crop_size, dc.crop_size), device=acc.device)
    with torch.no_grad():
        feats = fx.compute(x)
    cached = {"image": x, "mask": y, "streams": [feats[k].half() for k in fx.keys]}
    inline = {"image": x, "mask": y}
    step = lambda batch, k: train_step(model, batch, opt, acc, 1e-4, None, 255)  # noqa: E731
    t_inline = _model_only(inline, step, acc.device, steps, warmup)
    t_cached = _model_only(cached, step, acc.device, steps, warmup)
    return {"ddpm": preset, "variant": mc.variant, "stages": mc.stages, "batch": dc.batch_size, "size": dc.crop_size,
            "device": acc.device.type, "inline_steps_per_s": round(t_inline, 3), "cached_steps_per_s": round(t_cached, 3),
            "cached_speedup": round(t_cached / t_inline, 3)}
