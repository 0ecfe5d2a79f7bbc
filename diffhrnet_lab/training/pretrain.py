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
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import UNet2DModel
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ..config import DDPMConfig, samples_dir
from ..data.batch_pool import resolve
from ..data.datasets import UnlabelledPool
from ..ddpm.sample import save_sample_grid
from ..ddpm.unet import build_scheduler, build_unet, bundle_weights, save_bundle
from ..errors import ConfigError, DataError
from ..fileio import atomic_write_text, check_writable, checkpoint_bytes, load_tensors
from .accelerator import compiled, eager_channels_last, make_accelerator, step_loader
from .trackers import Tracking, check_log_with, logging_dir
from .checkpoints import fault_point, read_state, resolve_resume, save_checkpoint, write_state
from .schedules import cosine_with_warmup


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the message names the step and the last good checkpoint."""


def lr_at(step: int, cfg: DDPMConfig) -> float:
    return cosine_with_warmup(step, cfg.lr, cfg.warmup_steps, cfg.steps)


class LossLog:
    """Per-step losses kept on the device and read back only at log and checkpoint steps: a
    ``.item()`` every step would make the host wait for the GPU to finish each step before it can
    queue the next one."""

    def __init__(self):
        self.pending: list[torch.Tensor] = []
        self.first_step = 0

    def add(self, step: int, loss: torch.Tensor) -> None:
        if not self.pending:
            self.first_step = step
        self.pending.append(loss)

    def flush(self, last_good) -> list[float]:
        """The pending losses as floats (one host sync); raise :class:`TrainingDiverged` naming the
        first non-finite one's step."""
        if not self.pending:
            return []
        values = torch.stack(self.pending).double().cpu().tolist()
        self.pending = []
        for i, v in enumerate(values):
            if not torch.isfinite(torch.tensor(v)):
                raise TrainingDiverged(f"loss is {v} at step {self.first_step + i}; last good checkpoint: "
                                       f"{last_good or 'none'}. Lower the learning rate or check the data for "
                                       "NaN/inf pixels.")
        return values


class DDPMTrainer:
    """One DDPM training step (ε-prediction MSE, Ho et al. 2020, Eq. 14): the loop body of
    :func:`pretrain`, separate so that the pipeline benchmark can time it fed a batch that is
    already on the device."""

    def __init__(self, cfg: DDPMConfig, unet: UNet2DModel, optimizer, ema: EMAModel, accelerator: Accelerator):
        self.cfg, self.unet, self.optimizer, self.ema, self.accelerator = cfg, unet, optimizer, ema, accelerator
        self.scheduler = build_scheduler(cfg.beta_schedule, cfg.num_train_timesteps)
        # Noise comes from a generator on the training device (no per-step host → device copy of a
        # batch of noise); every process draws the global batch and keeps its slice.
        self.noise_gen = torch.Generator(device=accelerator.device).manual_seed(cfg.seed + 7919)
        self.forward, self.eager_nhwc = unet, False

    def prepare(self) -> "DDPMTrainer":
        """Device placement (and DDP) by accelerate; then the optional speed-ups, measured with
        ``diffhrnet-lab bench pipeline``: ``torch.compile`` on GPUs (its ``reduce-overhead`` mode
        replays the step as a CUDA graph) and channels-last activations (inside the compiled graph
        when compiling, :func:`~diffhrnet_lab.training.accelerator.compile_options`)."""
        acc, cfg = self.accelerator, self.cfg
        self.eager_nhwc = eager_channels_last(cfg.compile, cfg.channels_last, acc.device)
        if self.eager_nhwc:
            self.unet = self.unet.to(memory_format=torch.channels_last)
        self.unet, self.optimizer = acc.prepare(self.unet, self.optimizer)
        self.ema.to(acc.device)
        self.forward = compiled(self.unet, cfg.compile, cfg.channels_last, acc.device)
        return self

    def draw(self, shape) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise and timesteps for the global batch from one generator; this process keeps its slice."""
        cfg, acc = self.cfg, self.accelerator
        noise = torch.randn((cfg.batch_size, *shape), generator=self.noise_gen, device=acc.device)
        t = torch.randint(0, cfg.num_train_timesteps, (cfg.batch_size,), generator=self.noise_gen, device=acc.device)
        per = cfg.batch_size // acc.num_processes
        sl = slice(acc.process_index * per, (acc.process_index + 1) * per)
        return noise[sl], t[sl]

    def step(self, x0: torch.Tensor, step: int) -> torch.Tensor:
        """One optimisation step on clean images ``x0``; returns the (global mean) loss, on the device."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, self.cfg)
        noise, t = self.draw(x0.shape[1:])
        x_t = self.scheduler.add_noise(x0, noise, t)  # q(x_t | x_0), Ho et al. 2020, Eq. 4
        if self.eager_nhwc:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        with self.accelerator.autocast():
            pred = self.forward(x_t, t).sample
        loss = F.mse_loss(pred.float(), noise.float())
        self.accelerator.backward(loss)
        self.accelerator.clip_grad_norm_(self.unet.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(self.accelerator.unwrap_model(self.unet).parameters())
        return self.accelerator.gather(loss.detach()[None]).mean()


def setup(cfg: DDPMConfig, pool: UnlabelledPool, accelerator: Accelerator) -> DDPMTrainer:
    """U-Net, optimizer and EMA (diffusers' ``train_unconditional.py`` settings), prepared."""
    set_seed(cfg.seed)
    unet = build_unet(cfg.preset, pool.stats.bands, cfg.sample_size)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMAModel(unet.parameters(), decay=cfg.ema_max_decay, use_ema_warmup=True, inv_gamma=1.0, power=0.75,
                   model_cls=UNet2DModel, model_config=unet.config, foreach=True)
    return DDPMTrainer(cfg, unet, optimizer, ema, accelerator)


def pretrain(cfg: DDPMConfig, out_dir: str | os.PathLike, resume: str | None = None,
             stop_after: int | None = None, progress: bool = True) -> Path:
    """Train a DDPM on ``cfg.pool`` into ``out_dir``; return the final bundle's folder.

    ``resume``: ``"latest"`` or a checkpoint folder.  ``stop_after``: end this invocation after that
    global step (a checkpoint is written), as a scheduler's time limit would; resume continues it.
    Outputs: ``checkpoints/step_*``, ``loss_log.csv``, ``samples/step_*.png``, ``final/`` (EMA weights,
    the bundle that feature extraction loads).
    """
    out = check_writable(out_dir)
    accelerator = make_accelerator(cfg.mixed_precision, check_log_with(cfg.log_with), logging_dir(out))
    tracking = Tracking(accelerator, cfg.log_with, "pretrain", cfg)
    if cfg.batch_size % accelerator.num_processes:
        raise ConfigError(f"batch_size {cfg.batch_size} must divide by the {accelerator.num_processes} processes")
    main = accelerator.is_main_process
    if main:
        print(f"[pretrain] {accelerator.num_processes} process(es) on {accelerator.device.type}, global batch "
              f"{cfg.batch_size}, mixed precision {accelerator.mixed_precision}")
    pool_dir = Path(cfg.pool) if cfg.pool else samples_dir() / "unlabelled"
    pool = UnlabelledPool(pool_dir, crop_size=cfg.sample_size, augment=True, seed=cfg.seed)
    if len(pool) < cfg.batch_size:  # a few large scenes: each epoch is one batch of crops over them
        pool.samples_per_epoch = cfg.batch_size

    tr = setup(cfg, pool, accelerator)
    check_writable(out, checkpoint_bytes(tr.unet, copies=4), "checkpoints (weights, EMA, optimizer)")
    step = 0
    ckpt_root = out / "checkpoints"
    start = resolve_resume(resume, ckpt_root)
    if start is not None:
        step = _load_state(start, tr, cfg)
        if main:
            print(f"[pretrain] resumed from {start} at step {step}")
    elif resume and main:
        print(f"[pretrain] no checkpoint in {ckpt_root}: starting from step 0")

    tr.prepare()
    log_path = out / "loss_log.csv"
    if main:
        _truncate_log(log_path, step)
        atomic_write_text(out / "config.json", json.dumps({"ddpm": asdict(cfg), "stats": pool.stats.to_dict(),
                                                            "pool": cfg.pool or "embedded samples"}, indent=2))
    end = min(cfg.steps, stop_after) if stop_after is not None else cfg.steps
    bar = tqdm(total=cfg.steps, initial=step, desc="DDPM pretraining", disable=not (progress and main))
    losses, running, t0 = LossLog(), [], time.time()
    last_good = start

    def save(at: int) -> None:
        nonlocal last_good
        if main:
            last_good = save_checkpoint(ckpt_root, at, lambda d: _write_state(d, tr, at, cfg, pool), cfg.keep_checkpoints)
        accelerator.wait_for_everyone()

    loader = step_loader(accelerator, pool, cfg.batch_size, cfg.seed, step, end, cfg.num_workers)
    for batch in loader:
        losses.add(step + 1, tr.step(resolve(batch)["image"], step))
        step += 1
        fault_point("step", step)
        bar.update(1)
        log_now, ckpt_now = step % cfg.log_every == 0 or step == end, step % cfg.checkpoint_every == 0 or step == end
        if log_now or ckpt_now:
            running += losses.flush(last_good)
        if log_now:
            mean = sum(running) / len(running)
            bar.set_postfix(loss=f"{mean:.4f}")
            tracking.scalars({"train/loss": mean, "train/lr": lr_at(step - 1, cfg)}, step)
            if main:
                _append_log(log_path, step, (step - 1) // (len(pool) // cfg.batch_size), mean, lr_at(step - 1, cfg),
                            time.time() - t0)
            running = []
        if main and (step % cfg.sample_every == 0 or step == cfg.steps):
            _sample_grid(tr, out / "samples" / f"step_{step:07d}.png")
        if ckpt_now:
            save(step)
    bar.close()
    tracking.end()
    final = out / "final"
    if step >= cfg.steps and main:
        model = accelerator.unwrap_model(tr.unet)
        tr.ema.store(model.parameters())
        tr.ema.copy_to(model.parameters())
        save_bundle(final, model, tr.scheduler, pool.stats, {"preset": cfg.preset, "sample_size": cfg.sample_size,
                                                             "beta_schedule": cfg.beta_schedule, "step": step,
                                                             "seed": cfg.seed, "pool": cfg.pool or "embedded samples (unlabelled/)",
                                                             "weights": "ema"})
        tr.ema.restore(model.parameters())
    accelerator.wait_for_everyone()
    return final


def _write_state(d: Path, tr: DDPMTrainer, step: int, cfg: DDPMConfig, pool: UnlabelledPool) -> None:
    unet = tr.accelerator.unwrap_model(tr.unet)
    unet.save_pretrained(d / "unet", safe_serialization=True)
    ema = {n: p for (n, _), p in zip(unet.named_parameters(), tr.ema.shadow_params)}
    write_state(d, {"ema": ema, "rng": {"noise": tr.noise_gen.get_state()}}, tr.optimizer,
                {"step": step, "ema_optimization_step": tr.ema.optimization_step, "config": asdict(cfg),
                 "stats": pool.stats.to_dict()})


def _load_state(d: Path, tr: DDPMTrainer, cfg: DDPMConfig) -> int:
    saved_bands = len(json.loads((d / "state.json").read_text())["stats"]["low"])
    if saved_bands != tr.unet.config.in_channels:
        raise DataError(f"{d}: checkpoint was trained on {saved_bands}-band tiles but the pool has "
                        f"{tr.unet.config.in_channels} band(s)")
    state = read_state(d, tr.optimizer, {k: getattr(cfg, k) for k in
                                         ("preset", "sample_size", "batch_size", "seed", "beta_schedule")})
    tr.unet.load_state_dict(load_tensors(bundle_weights(d)))
    shadow = load_tensors(d / "ema.safetensors")
    tr.ema.shadow_params = [shadow[n].clone() for n, _ in tr.unet.named_parameters()]
    tr.ema.optimization_step = int(state["ema_optimization_step"])
    tr.noise_gen.set_state(load_tensors(d / "rng.safetensors")["noise"])
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


def _sample_grid(tr: DDPMTrainer, path: Path) -> None:
    """Generate a few samples with the EMA weights and save them as a grid (RGB bands)."""
    from ..ddpm.sample import generate

    unet = tr.accelerator.unwrap_model(tr.unet)
    was_training = unet.training
    unet.eval()
    tr.ema.store(unet.parameters())
    tr.ema.copy_to(unet.parameters())
    try:
        images = generate(unet, tr.scheduler, n=8, size=tr.cfg.sample_size, steps=50, seed=tr.cfg.seed)
    finally:
        tr.ema.restore(unet.parameters())
        unet.train(was_training)
    save_sample_grid(images, path)


def export_bundle(run_dir: str | os.PathLike, dest: str | os.PathLike, half: bool = False,
                  command: str | None = None) -> Path:
    """Copy a finished run's final bundle, loss log and last sample grid into ``dest``; its README
    records ``command`` (the command line that made the run), so the bundle can be remade."""
    from ..ddpm.unet import load_bundle

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

    {command or f"diffhrnet-lab pretrain --steps {cfg['steps']} --out {run} --export {dest}" + (" --export-half" if half else "")}

Files: `unet/` and `scheduler/` (diffusers `save_pretrained`, safetensors), `ddpm.json` (band statistics and
settings), `loss_log.csv`, `samples.png` (generated with 50 ancestral steps).
""")
    extra["README.md"] = readme
    return save_bundle(dest, bundle.unet, bundle.scheduler, bundle.stats, bundle.meta, extra_files=extra, half=half)
