"""DDPM pretraining on unlabelled tiles: the "pretrained diffusion model" half of Diff-HRNet.

The loop follows the diffusers ``train_unconditional.py`` example (ε-prediction MSE, AdamW, warm-up
then cosine LR, EMA of the weights, gradient clipping) on ``accelerate``, so the same code runs on a
CPU, one GPU in bf16, or several through ``accelerate launch``.  What it adds is exact resumption:

* The batch order of epoch ``e`` is a permutation seeded by ``(seed, e)`` and every crop by
  ``(seed, e, index)``, so the data a step sees depends on the step number alone.
* Noise and timesteps come from one ``torch.Generator`` whose state is checkpointed; each process
  draws the *global* batch's noise and keeps its slice, so 1 and N processes see the same numbers.
* Model, EMA and optimizer state are saved as safetensors (+ JSON), never pickled.

``--resume latest`` therefore continues the same run: same step, same optimizer and EMA state, same
data order, and the same final weights as a run that was never interrupted (tested on CPU).
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from diffusers import UNet2DModel
from diffusers.training_utils import EMAModel
from torch.utils.data import BatchSampler, DataLoader
from tqdm.auto import tqdm

from ..config import DDPMConfig, samples_dir
from ..data.datasets import UnlabelledPool
from ..errors import ConfigError, DataError
from ..fileio import atomic_write_text, check_writable, checkpoint_bytes
from .checkpoints import (load_tensors, optimizer_from_tensors, optimizer_to_tensors, resolve_resume,
                          save_checkpoint, save_tensors)
from .unet import build_scheduler, build_unet, save_bundle


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the message names the step and the last good checkpoint."""


def lr_at(step: int, cfg: DDPMConfig) -> float:
    """Linear warm-up, then cosine decay to zero (diffusers' ``get_cosine_schedule_with_warmup``)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def epoch_loader(accelerator: Accelerator, dataset, batch_size: int, seed: int, epoch: int, offset: int = 0,
                 num_workers: int = 0) -> DataLoader:
    """The batches of one epoch, from batch ``offset`` on, prepared by accelerate (sharded across processes).

    Two details keep runs exact: accelerate's loader calls ``dataset.set_epoch`` with *its own*
    epoch counter on every iteration, so that counter is set to ``epoch`` here (otherwise every
    fresh loader would replay epoch 0's crops); and the loader gets its own generator, because a
    DataLoader iterator otherwise draws a seed from the global RNG that dropout also uses.
    """
    steps = len(dataset) // batch_size
    order = epoch_order(len(dataset), seed, epoch)[offset * batch_size: steps * batch_size]
    # A real BatchSampler (over a list: a valid sampler) so that accelerate shards it: with
    # split_batches each process takes its slice of every global batch.  A plain list of batches
    # would be handed whole to every process.
    sampler = BatchSampler(order, batch_size, drop_last=True)
    loader = accelerator.prepare_data_loader(
        DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                   generator=torch.Generator().manual_seed(seed + epoch)), device_placement=True)
    loader.set_epoch(epoch)
    dataset.set_epoch(epoch)
    return loader


def make_accelerator(mixed_precision: str = "auto") -> Accelerator:
    """The Accelerator of every training loop: the configured batch is the *global* batch, split
    across processes (``split_batches``), so 1 and N processes train on the same numbers.  It must go
    through ``DataLoaderConfiguration``: accelerate 1.x ignores ``Accelerator(split_batches=...)``."""
    return Accelerator(mixed_precision=_mixed_precision(mixed_precision),
                       dataloader_config=DataLoaderConfiguration(split_batches=True))


def _mixed_precision(choice: str) -> str:
    if choice == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    if choice not in ("no", "bf16", "fp16"):
        raise ConfigError(f"mixed_precision '{choice}'; choose auto, no, bf16 or fp16")
    return choice


def pretrain(cfg: DDPMConfig, out_dir: str | os.PathLike, resume: str | None = None,
             stop_after: int | None = None, progress: bool = True) -> Path:
    """Train a DDPM on ``cfg.pool`` into ``out_dir``; return the final bundle's folder.

    ``resume``: ``"latest"`` or a checkpoint folder.  ``stop_after``: end this invocation after that
    global step (a checkpoint is written), as a scheduler's time limit would; resume continues it.
    Outputs: ``checkpoints/step_*``, ``loss_log.csv``, ``samples/step_*.png``, ``final/`` (EMA weights,
    the bundle that feature extraction loads).
    """
    out = check_writable(out_dir)
    accelerator = make_accelerator(cfg.mixed_precision)
    if cfg.batch_size % accelerator.num_processes:
        raise ConfigError(f"batch_size {cfg.batch_size} must divide by the {accelerator.num_processes} processes")
    main = accelerator.is_main_process
    if main:
        print(f"[pretrain] {accelerator.num_processes} process(es) on {accelerator.device.type}, global batch "
              f"{cfg.batch_size}, mixed precision {accelerator.mixed_precision}")
    pool_dir = Path(cfg.pool) if cfg.pool else samples_dir() / "unlabelled"
    pool = UnlabelledPool(pool_dir, crop_size=cfg.sample_size, augment=True, seed=cfg.seed)
    steps_per_epoch = len(pool) // cfg.batch_size
    if steps_per_epoch == 0:
        raise DataError(f"{pool_dir}: {len(pool)} tile(s) is fewer than one batch of {cfg.batch_size}")

    set_seed(cfg.seed)
    unet = build_unet(cfg.preset, pool.stats.bands, cfg.sample_size)
    scheduler = build_scheduler(cfg.beta_schedule, cfg.num_train_timesteps)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    check_writable(out, checkpoint_bytes(unet, copies=4), "checkpoints (weights, EMA, optimizer)")
    ema = EMAModel(unet.parameters(), decay=cfg.ema_max_decay, use_ema_warmup=True, inv_gamma=1.0, power=0.75,
                   model_cls=UNet2DModel, model_config=unet.config)
    noise_gen = torch.Generator().manual_seed(cfg.seed + 7919)

    step = 0
    ckpt_root = out / "checkpoints"
    start = resolve_resume(resume, ckpt_root)
    if start is not None:
        step = _load_state(start, unet, optimizer, ema, noise_gen, cfg)
        if main:
            print(f"[pretrain] resumed from {start} at step {step}")
    elif resume and main:
        print(f"[pretrain] no checkpoint in {ckpt_root}: starting from step 0")

    unet, optimizer = accelerator.prepare(unet, optimizer)
    ema.to(accelerator.device)
    log_path = out / "loss_log.csv"
    if main:
        _truncate_log(log_path, step)
        atomic_write_text(out / "config.json", json.dumps({"ddpm": asdict(cfg), "stats": pool.stats.to_dict(),
                                                            "pool": cfg.pool or "embedded samples"}, indent=2))
    end = min(cfg.steps, stop_after) if stop_after is not None else cfg.steps
    bar = tqdm(total=cfg.steps, initial=step, desc="DDPM pretraining", disable=not (progress and main))
    running, t0 = [], time.time()
    last_good = start

    def save(at: int) -> None:
        nonlocal last_good
        if main:
            model = accelerator.unwrap_model(unet)
            last_good = save_checkpoint(ckpt_root, at, lambda d: _write_state(d, model, optimizer, ema, noise_gen,
                                                                              at, cfg, pool), cfg.keep_checkpoints)
        accelerator.wait_for_everyone()

    while step < end:
        epoch, offset = divmod(step, steps_per_epoch)
        loader = epoch_loader(accelerator, pool, cfg.batch_size, cfg.seed, epoch, offset, cfg.num_workers)
        for batch in loader:
            x0 = batch["image"]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg)
            noise, t = _draw(noise_gen, cfg, x0.shape[1:], accelerator)
            noise, t = noise.to(x0.device), t.to(x0.device)
            x_t = scheduler.add_noise(x0, noise, t)
            with accelerator.autocast():
                pred = unet(x_t, t).sample
            loss = F.mse_loss(pred.float(), noise.float())
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss is {loss.item()} at step {step + 1}; last good checkpoint: "
                                       f"{last_good or 'none'}. Lower the learning rate or check the pool for "
                                       "NaN/inf pixels.")
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ema.step(accelerator.unwrap_model(unet).parameters())
            step += 1
            running.append(accelerator.gather(loss.detach()[None]).mean().item())
            bar.update(1)
            if step % cfg.log_every == 0 or step == end:
                mean = sum(running) / len(running)
                bar.set_postfix(loss=f"{mean:.4f}")
                if main:
                    _append_log(log_path, step, epoch, mean, lr_at(step - 1, cfg), time.time() - t0)
                running = []
            if main and (step % cfg.sample_every == 0 or step == cfg.steps):
                _sample_grid(accelerator.unwrap_model(unet), ema, scheduler, cfg, out / "samples" / f"step_{step:07d}.png")
            if step % cfg.checkpoint_every == 0 or step == end:
                save(step)
            if step >= end:
                break
    bar.close()
    final = out / "final"
    if step >= cfg.steps and main:
        model = accelerator.unwrap_model(unet)
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
        save_bundle(final, model, scheduler, pool.stats, {"preset": cfg.preset, "sample_size": cfg.sample_size,
                                                          "beta_schedule": cfg.beta_schedule, "step": step,
                                                          "seed": cfg.seed, "pool": cfg.pool or "embedded samples (unlabelled/)",
                                                          "weights": "ema"})
        ema.restore(model.parameters())
    accelerator.wait_for_everyone()
    return final


def _draw(gen: torch.Generator, cfg: DDPMConfig, shape, accelerator: Accelerator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise and timesteps for the global batch from one generator; this process keeps its slice."""
    noise = torch.randn((cfg.batch_size, *shape), generator=gen)
    t = torch.randint(0, cfg.num_train_timesteps, (cfg.batch_size,), generator=gen)
    per = cfg.batch_size // accelerator.num_processes
    sl = slice(accelerator.process_index * per, (accelerator.process_index + 1) * per)
    return noise[sl], t[sl]


def _write_state(d: Path, unet: UNet2DModel, optimizer, ema: EMAModel, noise_gen: torch.Generator, step: int,
                 cfg: DDPMConfig, pool: UnlabelledPool) -> None:
    unet.save_pretrained(d / "unet", safe_serialization=True)
    save_tensors(d / "ema.safetensors", {n: p for (n, _), p in zip(unet.named_parameters(), ema.shadow_params)})
    tensors, desc = optimizer_to_tensors(optimizer)
    save_tensors(d / "optimizer.safetensors", tensors)
    save_tensors(d / "rng.safetensors", {"noise": noise_gen.get_state()})
    (d / "optimizer.json").write_text(json.dumps(desc))
    (d / "state.json").write_text(json.dumps({"step": step, "ema_optimization_step": ema.optimization_step,
                                              "config": asdict(cfg), "stats": pool.stats.to_dict()}, indent=2))


def _load_state(d: Path, unet: UNet2DModel, optimizer, ema: EMAModel, noise_gen: torch.Generator,
                cfg: DDPMConfig) -> int:
    state = json.loads((d / "state.json").read_text())
    saved = state["config"]
    saved_bands = len(state["stats"]["low"])
    if saved_bands != unet.config.in_channels:
        raise DataError(f"{d}: checkpoint was trained on {saved_bands}-band tiles but the pool has "
                        f"{unet.config.in_channels} band(s)")
    for key in ("preset", "sample_size", "batch_size", "seed", "beta_schedule"):
        if saved.get(key) != getattr(cfg, key):
            raise ConfigError(f"{d}: checkpoint has {key}={saved.get(key)!r} but this run has {getattr(cfg, key)!r}; "
                              "resume with the same settings or start a new output folder")
    from safetensors.torch import load_file

    weights = load_file(str(d / "unet" / "diffusion_pytorch_model.safetensors"))
    unet.load_state_dict(weights)
    shadow = load_tensors(d / "ema.safetensors")
    ema.shadow_params = [shadow[n].clone() for n, _ in unet.named_parameters()]
    ema.optimization_step = int(state["ema_optimization_step"])
    optimizer_from_tensors(optimizer, load_tensors(d / "optimizer.safetensors"),
                           json.loads((d / "optimizer.json").read_text()))
    noise_gen.set_state(load_tensors(d / "rng.safetensors")["noise"])
    return int(state["step"])


LOG_FIELDS = ("step", "epoch", "loss", "lr", "seconds")


def _append_log(path: Path, step: int, epoch: int, loss: float, lr: float, seconds: float) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        w = csv.writer(fh)
        if new:
            w.writerow(LOG_FIELDS)
        w.writerow([step, epoch, f"{loss:.6f}", f"{lr:.6g}", f"{seconds:.1f}"])
        fh.flush()
        os.fsync(fh.fileno())


def _truncate_log(path: Path, step: int) -> None:
    """On resume, drop log rows past the checkpoint: those steps are about to be redone."""
    if not path.exists():
        return
    rows = read_loss_log(path)
    kept = [r for r in rows if int(r["step"]) <= step]
    text = ",".join(LOG_FIELDS) + "\n" + "".join(",".join(str(r[k]) for k in LOG_FIELDS) + "\n" for r in kept)
    atomic_write_text(path, text)


def read_loss_log(path: str | os.PathLike) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _sample_grid(unet: UNet2DModel, ema: EMAModel, scheduler, cfg: DDPMConfig, path: Path) -> None:
    """Generate a few samples with the EMA weights and save them as a grid (RGB bands)."""
    from ..viz import plot_image_grid, save_figure
    from .sample import generate

    was_training = unet.training
    unet.eval()
    ema.store(unet.parameters())
    ema.copy_to(unet.parameters())
    try:
        images = generate(unet, scheduler, n=8, size=cfg.sample_size, steps=50, seed=cfg.seed)
    finally:
        ema.restore(unet.parameters())
        unet.train(was_training)
    save_figure(plot_image_grid(images.numpy(), cols=8, title=path.stem.replace("_", " ")), path)


def export_bundle(run_dir: str | os.PathLike, dest: str | os.PathLike, half: bool = False) -> Path:
    """Copy a finished run's final bundle, loss log and last sample grid into ``dest``."""
    from .unet import load_bundle

    run = Path(run_dir)
    bundle = load_bundle(run / "final")
    grids = sorted((run / "samples").glob("step_*.png"))
    extra = {"loss_log.csv": run / "loss_log.csv"}
    if grids:
        extra["samples.png"] = grids[-1]
    log = read_loss_log(run / "loss_log.csv")
    cfg = json.loads((run / "config.json").read_text())["ddpm"]
    readme = run / "EXPORT_README.md"
    atomic_write_text(readme, f"""# DDPM bundle: `{cfg['preset']}` U-Net, {bundle.bands} bands

Pretrained on {bundle.meta.get('pool')} for {bundle.meta['step']} steps (batch {cfg['batch_size']}, {cfg['sample_size']}² crops,
{cfg['beta_schedule']} β schedule, lr {cfg['lr']}, seed {cfg['seed']}); EMA weights{', stored in float16' if half else ''}.
Final training loss (mean of the last logged interval): {float(log[-1]['loss']):.4f}; wall time {float(log[-1]['seconds']) / 60:.1f} min.

Made with:

    diffhrnet-lab pretrain --profile quick --out runs/ddpm_tiny --export data_samples/ddpm_tiny --export-half

Files: `unet/` and `scheduler/` (diffusers `save_pretrained`, safetensors), `ddpm.json` (band statistics and
settings), `loss_log.csv`, `samples.png` (generated with 50 ancestral steps).
""")
    extra["README.md"] = readme
    return save_bundle(dest, bundle.unet, bundle.scheduler, bundle.stats, bundle.meta, extra_files=extra, half=half)
