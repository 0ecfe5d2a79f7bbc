"""Fine-tuning HRNet, Diff-HRNet and the DDPM pixel classifier on labelled tiles.

The recipe is mmsegmentation's for HRNetV2 (cross-entropy with an ignore index, poly learning-rate
decay with power 0.9, BN everywhere), with AdamW because few-label runs of a few hundred steps
need its faster start.  Runs are reproducible and resumable like DDPM pretraining: data order and
crops depend on (seed, step) only, the RNG state is checkpointed, everything is written
atomically as safetensors + JSON.  Validation scores *whole* held-out tiles in windows
(``inference.evaluate``), the way the model will be used, and the best checkpoint by validation
mIoU is kept.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from ..config import MODEL_FIELDS_BEFORE, SCORING_ONLY, FeatureConfig, ProfileConfig, embedded_ddpm_dir
from ..data.datasets import LabelledTiles, compact_images_for, label_budget, only_groups
from ..data.io import compute_band_stats
from ..data.layouts import train_val_pairs
from ..ddpm.unet import bundle_weights, load_bundle
from ..errors import ConfigError
from ..features.extractor import FeatureExtractor, file_hash
from ..fileio import atomic_write_csv, atomic_write_json, check_writable, checkpoint_bytes, load_tensors
from ..inference.evaluate import validate
from ..inference.metrics import scores
from ..models.pretrained import load_timm_backbone
from ..models.segmenters import SEGMENTERS, build_segmenter, ddpm_dir_of, save_segmenter
from .accelerator import compiled, eager_channels_last, make_accelerator, step_loader
from .checkpoints import fault_point, read_state, resolve_resume, save_checkpoint, write_state
from .pretrain import LossLog
from .schedules import poly_with_warmup
from .trackers import Tracking, check_log_with, logging_dir


def poly_lr(step: int, cfg) -> float:
    return poly_with_warmup(step, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.poly_power)


def _class_weights(ds: LabelledTiles, mode: str) -> torch.Tensor | None:
    if mode == "none":
        return None
    if mode != "inverse_sqrt":
        raise ConfigError(f"class_weights '{mode}': choose none or inverse_sqrt")
    freq = ds.class_pixel_counts().astype(np.float64)
    w = 1.0 / np.sqrt(np.maximum(freq / freq.sum(), 1e-4))
    return torch.tensor(w / w.mean(), dtype=torch.float32)


# what a finished run trained with, beyond its model (model.json): a run is reused only under the same values
RUN_SETTINGS = {"data": ("crop_size", "batch_size", "max_per_group", "photometric", "label_budget", "seed"),
                "train": ("steps", "lr", "weight_decay", "poly_power", "warmup_steps", "class_weights", "seed",
                          "teacher", "pseudo_threshold", "pseudo_class_fraction")}


def run_settings(cfg: ProfileConfig) -> dict[str, Any]:
    """``section.field`` → value of :data:`RUN_SETTINGS` (a teacher as its resolved path, so two
    spellings of one folder agree; the pseudo-label settings as ``None`` without one); kept in
    ``summary.json``."""
    out = {f"{section}.{key}": getattr(getattr(cfg, section), key) for section, keys in RUN_SETTINGS.items()
           for key in keys}
    if out["train.teacher"]:
        out["train.teacher"] = str(Path(out["train.teacher"]).resolve())
    else:  # without a teacher the pseudo-label settings do nothing
        out["train.pseudo_threshold"] = out["train.pseudo_class_fraction"] = None
    return out


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None, ignore_index: int,
                  empty_ok: bool = False) -> torch.Tensor:
    """Mean cross-entropy over the pixels not ignored; a batch whose pixels are all ignored (crops
    inside a no-data region, ISPRS boundaries, LoveDA's no-data) gives a loss of 0 and zero
    gradients, where PyTorch's mean gives NaN (0 / 0) and the logged loss would be NaN from then on.

    ``empty_ok`` (self-training, ``training.pseudo``) sums and divides itself, as the runs of
    rounds 19 and 19b did; otherwise PyTorch's own mean is kept bit for bit where any pixel counts,
    and the empty case is selected away without a host sync."""
    if not empty_ok:
        mean = F.cross_entropy(logits, target, weight=weights, ignore_index=ignore_index)
        return torch.where((target != ignore_index).any(), mean, torch.zeros_like(mean))
    per_pixel = F.cross_entropy(logits, target, weight=weights, ignore_index=ignore_index, reduction="none")
    valid = target != ignore_index
    counted = valid.sum() if weights is None else (weights[target.clamp(max=len(weights) - 1)] * valid).sum()
    return per_pixel.sum() / counted.clamp(min=1)


def train_step(model: nn.Module, batch: dict, optimizer, accelerator, lr: float, weights: torch.Tensor | None,
               ignore_index: int, empty_ok: bool = False) -> torch.Tensor:
    """One optimisation step; returns the (global mean) loss, left on the device.  ``empty_ok``: see
    :func:`cross_entropy`."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    with accelerator.autocast():
        logits = model(batch["image"], batch.get("streams"))
    target = batch["mask"].long()
    loss = cross_entropy(logits.float(), target, weights, ignore_index, empty_ok)
    inner = accelerator.unwrap_model(model)
    aux = getattr(inner, "aux_logits", None)
    if aux is not None:  # Diff-HRNet's features-only head, supervised on its own (model.aux_weight)
        loss = loss + inner.aux_weight * cross_entropy(aux.float(), target, weights, ignore_index, empty_ok)
        inner.aux_logits = None
    accelerator.backward(loss)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return accelerator.gather(loss.detach()[None]).mean()


def finetune(cfg: ProfileConfig, out_dir: str | os.PathLike, resume: str | None = None, stop_after: int | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Train ``cfg.model`` on the labelled tiles of ``cfg.data``; return the summary (also ``summary.json``)."""
    out = check_writable(out_dir)
    dc, mc, tc, fc = cfg.data, cfg.model, cfg.train, cfg.features
    if mc.method not in SEGMENTERS:
        raise ConfigError(f"unknown method '{mc.method}'; choose one of {', '.join(SEGMENTERS)}")
    if fc.cache and mc.finetune_ddpm:
        raise ConfigError("features.cache needs a frozen DDPM: cached features cannot follow a DDPM being fine-tuned")
    accelerator = make_accelerator(tc.mixed_precision, check_log_with(tc.log_with), logging_dir(out))
    tracking = Tracking(accelerator, tc.log_with, "finetune", cfg)
    main = accelerator.is_main_process
    scheme, train_pairs, val_pairs = train_val_pairs(dc)  # a named dataset: its official split
    if dc.train_groups is not None:
        train_pairs = only_groups(train_pairs, dc.train_groups, "training")
    candidates, train_pairs = train_pairs, label_budget(train_pairs, dc.label_budget, seed=dc.seed)
    bundle = load_bundle(ddpm_dir_of(fc)) if mc.method != "hrnet" else None
    stats = bundle.stats if bundle else compute_band_stats([p.image for p in train_pairs + val_pairs])
    pseudo_pairs, pseudo_masks, pseudo_kept, teacher = [], [], None, None
    if tc.teacher:  # self-training: the other training scenes, labelled by the teacher (training.pseudo)
        from .pseudo import load_or_make, teacher_checkpoint, unlabelled_pairs

        teacher = teacher_checkpoint(tc.teacher)
        pseudo_pairs = unlabelled_pairs(candidates, train_pairs)
        if not pseudo_pairs:
            raise ConfigError(f"train.teacher is set but the label budget leaves no training scene unlabelled "
                              f"(labelled: {sorted({p.group for p in train_pairs})})")
        pseudo_masks, pseudo_kept = load_or_make(out, teacher, pseudo_pairs, fc, tc.pseudo_threshold, scheme.name,
                                                 tc.eval_window, accelerator.device, progress and main, write=main,
                                                 class_fraction=tc.pseudo_class_fraction)
        if main:
            print(f"[finetune] self-training: {len(pseudo_pairs)} tile(s) of {sorted({p.group for p in pseudo_pairs})} "
                  f"labelled by {teacher}, {100 * pseudo_kept:.1f} % of pixels at or above "
                  f"softmax {tc.pseudo_threshold}" + (f", the surest {tc.pseudo_class_fraction:.0%} of each class"
                                                      if tc.pseudo_class_fraction else ""))
    n_batches = max(1, -(-(len(train_pairs) + len(pseudo_pairs)) // dc.batch_size))
    train_ds = LabelledTiles(train_pairs + pseudo_pairs, scheme, stats, crop_size=dc.crop_size, augment=True,
                             samples_per_epoch=n_batches * dc.batch_size, seed=tc.seed, compact_masks=True,
                             photometric=dc.photometric,
                             compact_images=compact_images_for(accelerator.device),
                             masks=[None] * len(train_pairs) + pseudo_masks)
    val_ds = LabelledTiles(val_pairs, scheme, stats)
    set_seed(tc.seed)
    model = build_segmenter(mc, fc, scheme.num_classes, stats.bands, bundle)
    if fc.cache and mc.method != "hrnet":
        model.extractor.unet.to(accelerator.device)
        _attach_cached_features(model.extractor, fc, (train_ds, val_ds), progress and main)
    if mc.init_timm:
        load_timm_backbone(model.backbone, mc.init_timm)  # a timm model name, or a local .safetensors file
    params = (model.param_groups(mc.rgb_lr) if hasattr(model, "param_groups")
              else [{"params": [p for p in model.parameters() if p.requires_grad], "lr_scale": 1.0}])
    check_writable(out, checkpoint_bytes(model, copies=3), "checkpoints (weights, optimizer)")
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    weights = _class_weights(train_ds, tc.class_weights)

    meta = {"model": asdict(mc), "features": asdict(fc), "num_classes": scheme.num_classes, "scheme": scheme.name,
            "classes": list(scheme.classes), "bands": stats.bands, "stats": stats.to_dict(), "eval_window": tc.eval_window,
            "data": {"root": str(dc.root or "embedded samples"), "train_groups": sorted({p.group for p in train_pairs}),
                     "val_groups": sorted({p.group for p in val_pairs}), "label_budget": dc.label_budget,
                     "pseudo_groups": sorted({p.group for p in pseudo_pairs}),
                     "teacher": str(teacher) if teacher else None,
                     "pseudo_threshold": tc.pseudo_threshold if tc.teacher else None,
                     "pseudo_class_fraction": tc.pseudo_class_fraction if tc.teacher else None,
                     "pseudo_kept": pseudo_kept},
            "ddpm": None if bundle is None else {
                "path": "embedded" if ddpm_dir_of(fc).resolve() == embedded_ddpm_dir().resolve() else str(ddpm_dir_of(fc)),
                "sha256": file_hash(bundle_weights(bundle.path))}}
    step, best, history = 0, {"miou": -1.0, "step": 0}, []
    ckpt_root = out / "checkpoints"
    start = resolve_resume(resume, ckpt_root)
    if start is not None:
        step, best, history = _load_train_state(start, model, optimizer, cfg)
        if main:
            print(f"[finetune] resumed from {start} at step {step}")
    if main:
        print(f"[finetune] {accelerator.num_processes} process(es) on {accelerator.device.type}, global batch "
              f"{dc.batch_size}, mixed precision {accelerator.mixed_precision}")
    if dc.batch_size % accelerator.num_processes:
        raise ConfigError(f"data.batch_size {dc.batch_size} must divide by the {accelerator.num_processes} processes "
                          "(it is the global batch, split across them)")
    if accelerator.num_processes > 1 and not tc.norm_eval:
        if tc.sync_bn and accelerator.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif main:
            print(f"[finetune] note: {accelerator.num_processes} processes on {accelerator.device.type}: BatchNorm "
                  "statistics are per process (SyncBatchNorm needs GPUs); set train.norm_eval=true for results "
                  "independent of the process count")
    if eager_channels_last(tc.compile, tc.channels_last, accelerator.device):
        model = model.to(memory_format=torch.channels_last)
    model, optimizer = accelerator.prepare(model, optimizer)
    net = compiled(model, tc.compile, tc.channels_last, accelerator.device)
    if weights is not None:
        weights = weights.to(accelerator.device)
    end = min(tc.steps, stop_after) if stop_after is not None else tc.steps
    bar = tqdm(total=tc.steps, initial=step, desc=f"fine-tuning {mc.method}", disable=not (progress and main))
    t0 = time.time()
    last_good = start
    losses, unlogged = LossLog(), []

    def evaluate_now() -> dict:
        cm, preds = validate(accelerator.unwrap_model(model), val_ds, tc.eval_window, accelerator.device)
        train_mode(model, tc.norm_eval)
        val = scores(cm, list(scheme.classes)).as_dict()
        tracking.validation(step, val, val_ds, preds)
        return val

    def flush() -> None:
        """Losses to the history rows that wait for them (one host sync per log interval)."""
        for row, value in zip(unlogged, losses.flush(last_good)):
            row["loss"] = value
            tracking.scalars({"train/loss": value, "train/lr": poly_lr(row["step"] - 1, tc)}, row["step"])
        unlogged.clear()
        recent = [r["loss"] for r in history[-10:]]
        bar.set_postfix(loss=f"{np.mean(recent):.3f}", best=f"{max(best['miou'], 0):.3f}")

    train_mode(model, tc.norm_eval)
    for batch in step_loader(accelerator, train_ds, dc.batch_size, tc.seed, step, end, tc.num_workers):
        losses.add(step + 1, train_step(net, train_ds.finish(batch), optimizer, accelerator, poly_lr(step, tc), weights,
                                        scheme.ignore_index, empty_ok=bool(pseudo_pairs)))
        step += 1
        fault_point("step", step)
        row = {"step": step, "loss": None, "seconds": round(time.time() - t0, 1)}
        history.append(row)
        unlogged.append(row)
        bar.update(1)
        eval_now = step % tc.eval_every == 0 or step == tc.steps
        ckpt_now = step % tc.checkpoint_every == 0 or step == end
        if eval_now or ckpt_now or step % tc.log_every == 0:
            flush()
        if eval_now:
            val = evaluate_now()
            row.update(val_miou=val["miou"], val_oa=val["oa"])
            if val["miou"] > best["miou"]:
                best = {"miou": val["miou"], "step": step, "scores": val}
                if main:
                    save_segmenter(out / "best", accelerator.unwrap_model(model), {**meta, "step": step, "val": val})
        if ckpt_now:
            if main:
                last_good = save_checkpoint(ckpt_root, step, lambda d: _write_train_state(
                    d, accelerator.unwrap_model(model), optimizer, step, best, history, cfg), tc.keep_checkpoints)
            accelerator.wait_for_everyone()
    bar.close()
    tracking.end()
    summary = {"method": mc.method, "steps": step, "best_miou": best["miou"], "best_step": best["step"],
               "best_scores": best.get("scores"), "history": history, "train_groups": meta["data"]["train_groups"],
               "val_groups": meta["data"]["val_groups"], "pseudo_groups": meta["data"]["pseudo_groups"],
               "teacher": meta["data"]["teacher"], "pseudo_kept": pseudo_kept, "settings": run_settings(cfg),
               "out": str(out)}
    if step >= tc.steps and main:
        save_segmenter(out / "last", accelerator.unwrap_model(model), {**meta, "step": step})
        atomic_write_csv(out / "history.csv", history, ["step", "loss", "seconds", "val_miou", "val_oa"])
        atomic_write_json(out / "summary.json", summary)
    return summary


def train_mode(model: nn.Module, norm_eval: bool = False) -> None:
    """``model.train()``; with ``norm_eval`` every BatchNorm stays in eval mode (running statistics,
    frozen), so each sample is normalised alone and a batch split across processes changes nothing."""
    model.train()
    if norm_eval:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _attach_cached_features(fx: FeatureExtractor, fc: FeatureConfig, datasets, progress: bool) -> None:
    """The feature cache: each tile's DDPM features computed once (tiled, blended), then cropped
    with the image for training and windowed with it for validation.  Training no longer runs the
    DDPM, which on a CPU is most of a Diff-HRNet step."""
    from ..features.tile_cache import tile_features

    fx.cache_dir = Path(fc.cache_dir) if fc.cache_dir else None
    strides = [fx.info[b]["stride"] for _, b in fx.keys]
    for ds in datasets:
        items = [(p.id, torch.from_numpy(im)) for p, im in zip(ds.pairs, ds.images)]
        ds.attach_features(tile_features(fx, items, window=fc.cache_window, progress=progress,
                                         dtype=fc.cache_dtype), strides)


def _write_train_state(d: Path, model: nn.Module, optimizer, step: int, best: dict, history: list, cfg: ProfileConfig) -> None:
    write_state(d, {"model": model.trainable_state_dict(), "rng": {"torch": torch.get_rng_state()}}, optimizer,
                {"step": step, "best": best, "history": history, "config": asdict(cfg)})


def _load_train_state(d: Path, model: nn.Module, optimizer, cfg: ProfileConfig) -> tuple[int, dict, list]:
    same = {f"{section}.{key}": getattr(getattr(cfg, section), key) for section, key in (
        ("model", "method"), ("model", "variant"), ("model", "stages"), ("model", "fusion"),
        *(("model", k) for k in MODEL_FIELDS_BEFORE if k not in SCORING_ONLY), ("data", "batch_size"), ("train", "seed"))}
    state = read_state(d, optimizer, same, {f"model.{k}": v for k, v in MODEL_FIELDS_BEFORE.items()})
    model.load_state_dict(load_tensors(d / "model.safetensors"), strict=False)
    torch.set_rng_state(load_tensors(d / "rng.safetensors")["torch"])
    return int(state["step"]), state["best"], state["history"]
