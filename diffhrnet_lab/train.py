"""Fine-tuning and evaluation of HRNet, Diff-HRNet and the DDPM pixel classifier on labelled tiles.

The recipe is mmsegmentation's for HRNetV2 (cross-entropy with an ignore index, poly learning-rate
decay with power 0.9, BN everywhere), with AdamW because few-label runs of a few hundred steps
need its faster start.  Runs are reproducible and resumable like DDPM pretraining: data order and
crops depend on (seed, epoch, index) only, the RNG state is checkpointed, everything is written
atomically as safetensors + JSON.  Validation runs sliding-window inference over *whole* held-out
tiles, the way the model will be used, and the best checkpoint by validation mIoU is kept.

A checkpoint folder (``best/``, ``last/``) holds ``model.safetensors`` and ``model.json`` (method,
variant, fusion settings, classes, band statistics, and the DDPM's bundle path and weight hash).
A frozen DDPM is not copied into it: it is found again through ``model.json`` and its hash checked.
"""

from __future__ import annotations

import json
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
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .config import FeatureConfig, ModelConfig, ProfileConfig, embedded_ddpm_dir
from .data.datasets import LabelledTiles, find_pairs, first_per_group, label_budget, split_by_group
from .data.io import BandStats, compute_band_stats, list_tiles, read_mask, read_tile
from .data.labels import get_scheme
from .data.tiling import predict_sliding, write_prediction
from .ddpm.checkpoints import (load_tensors, optimizer_from_tensors, optimizer_to_tensors, resolve_resume,
                               save_checkpoint, save_tensors)
from .ddpm.features import FeatureExtractor, file_hash
from .ddpm.pretrain import TrainingDiverged, epoch_loader, make_accelerator
from .ddpm.unet import load_bundle
from .errors import ConfigError, DataError
from .fileio import atomic_dir, atomic_write_csv, atomic_write_json, check_writable, checkpoint_bytes
from .metrics import confusion_matrix, scores
from .models.fusion import DDPMPixelClassifier, DiffHRNet
from .models.hrnet import convert_timm_state_dict

METHODS = ("hrnet", "diffhrnet", "ddpm_mlp")


# -- building, saving, loading -------------------------------------------------------------------
def _ddpm_dir(features: FeatureConfig) -> Path:
    return Path(features.checkpoint) if features.checkpoint else embedded_ddpm_dir()


def build_segmenter(model: ModelConfig, features: FeatureConfig, num_classes: int, bands: int,
                    bundle=None) -> nn.Module:
    if model.method not in METHODS:
        raise ConfigError(f"unknown method '{model.method}'; choose one of {', '.join(METHODS)}")
    if model.method == "hrnet":
        return DiffHRNet(num_classes, bands, model.variant, extractor=None, head_dropout=model.head_dropout)
    if bundle is None:
        raise ConfigError(f"method '{model.method}' needs a DDPM bundle")
    if bundle.bands != bands:
        raise DataError(f"{bundle.path}: the DDPM was trained on {bundle.bands} band(s) but the tiles have {bands}")
    fx = FeatureExtractor.from_bundle(bundle, features.timesteps, features.blocks, noise_seed=features.noise_seed)
    if model.method == "ddpm_mlp":
        return DDPMPixelClassifier(num_classes, fx, finetune_ddpm=model.finetune_ddpm)
    return DiffHRNet(num_classes, bands, model.variant, extractor=fx, stages=model.stages, fusion=model.fusion,
                     finetune_ddpm=model.finetune_ddpm, head_dropout=model.head_dropout)


def save_segmenter(path: Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    with atomic_dir(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.trainable_state_dict().items()},
                  str(tmp / "model.safetensors"), metadata={"format": "pt"})
        atomic_write_json(tmp / "model.json", meta)
    return path


def _checkpoint_files(path: Path) -> tuple[Path, Path]:
    path = Path(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise DataError(f"{path}: not a kit checkpoint. Only safetensors weights are loaded; a pickle "
                            "(.ckpt/.pt/.pth/.bin) is refused without being opened, since unpickling can run code")
        path = path.parent
    weights, meta = path / "model.safetensors", path / "model.json"
    if not meta.is_file() or not weights.is_file():
        raise DataError(f"{path}: not a segmentation checkpoint (needs model.json and model.safetensors)")
    return weights, meta


def load_segmenter(path: str | os.PathLike, ddpm_path: str | os.PathLike | None = None,
                   expect: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a segmenter from its checkpoint folder (safetensors only).

    ``expect`` (e.g. ``{"variant": "w18", "num_classes": 6}``) makes a mismatch an error that names
    both the checkpoint's and the expected values.
    """
    weights, meta_file = _checkpoint_files(Path(path))
    try:
        meta = json.loads(meta_file.read_text())
        state = load_file(str(weights))
    except (SafetensorError, ValueError, OSError) as exc:
        raise DataError(f"{weights.parent}: corrupt checkpoint ({str(exc)[:150]})") from None
    mc, fc = ModelConfig(**meta["model"]), FeatureConfig(**{**meta["features"], "timesteps": tuple(meta["features"]["timesteps"]),
                                                            "blocks": tuple(meta["features"]["blocks"])})
    for key, want in (expect or {}).items():
        have = meta["num_classes"] if key == "num_classes" else getattr(mc, key, meta.get(key))
        if have != want:
            raise DataError(f"{weights.parent}: checkpoint is {mc.method} {mc.variant} with {meta['num_classes']} "
                            f"classes, but {key}={want!r} was expected (checkpoint has {have!r})")
    bundle = None
    if mc.method != "hrnet":
        ddpm_dir = Path(ddpm_path) if ddpm_path else (embedded_ddpm_dir() if meta["ddpm"]["path"] == "embedded"
                                                       else Path(meta["ddpm"]["path"]))
        bundle = load_bundle(ddpm_dir)
        if not mc.finetune_ddpm:
            have = file_hash(ddpm_dir / "unet" / "diffusion_pytorch_model.safetensors")
            if have != meta["ddpm"]["sha256"]:
                raise DataError(f"{ddpm_dir}: DDPM weights differ from those {weights.parent} was trained with "
                                f"(sha256 {have[:12]} vs {meta['ddpm']['sha256'][:12]}); pass the right bundle")
    model = build_segmenter(mc, fc, meta["num_classes"], meta["bands"], bundle)
    own = model.trainable_state_dict()
    bad = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items() if k in state and state[k].shape != v.shape]
    missing = sorted(set(own) - set(state))
    if bad or missing:
        detail = f"{bad[0][0]} is {bad[0][1]} in the file, {bad[0][2]} in the model" if bad else f"missing {missing[:3]}"
        raise DataError(f"{weights}: weights do not fit {mc.method} {mc.variant} with {meta['num_classes']} classes "
                        f"as model.json says ({detail})")
    model.load_state_dict(state, strict=False)
    return model.eval(), meta


# -- training -------------------------------------------------------------------------------------
def poly_lr(step: int, cfg) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * (1 - min(step, cfg.steps - 1) / cfg.steps) ** cfg.poly_power


def _class_weights(ds: LabelledTiles, mode: str) -> torch.Tensor | None:
    if mode == "none":
        return None
    if mode != "inverse_sqrt":
        raise ConfigError(f"class_weights '{mode}': choose none or inverse_sqrt")
    freq = ds.class_pixel_counts().astype(np.float64)
    w = 1.0 / np.sqrt(np.maximum(freq / freq.sum(), 1e-4))
    return torch.tensor(w / w.mean(), dtype=torch.float32)


@torch.no_grad()
def validate(model: nn.Module, ds: LabelledTiles, window: int, device, progress: bool = False) -> tuple[torch.Tensor, list]:
    """Sliding-window prediction over whole tiles; returns the confusion matrix and predictions."""
    model.eval()
    k = ds.scheme.num_classes
    cm = torch.zeros(k, k, dtype=torch.int64)
    preds = []
    for i in tqdm(range(len(ds.pairs)), desc="validating", disable=not progress, leave=False):
        img = torch.from_numpy(ds.images[i]).to(device)
        if ds.features is not None:
            logits = model(img[None], [f[None].to(device) for f in ds.features[i]])[0]
        elif window == 0:
            logits = model(img[None])[0]
        else:
            logits = predict_sliding(lambda b: model(b), img, window=window, overlap=0.25)
        pred = logits.argmax(0).cpu()
        cm += confusion_matrix(pred, torch.from_numpy(ds.masks[i].astype(np.int64)), k, ds.scheme.ignore_index)
        preds.append(pred.numpy().astype(np.uint8))
    return cm, preds


def finetune(cfg: ProfileConfig, out_dir: str | os.PathLike, resume: str | None = None, stop_after: int | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Train ``cfg.model`` on the labelled tiles of ``cfg.data``; return the summary (also ``summary.json``)."""
    out = check_writable(out_dir)
    dc, mc, tc, fc = cfg.data, cfg.model, cfg.train, cfg.features
    if mc.method not in METHODS:
        raise ConfigError(f"unknown method '{mc.method}'; choose one of {', '.join(METHODS)}")
    if fc.cache and mc.finetune_ddpm:
        raise ConfigError("features.cache needs a frozen DDPM: cached features cannot follow a DDPM being fine-tuned")
    accelerator = make_accelerator(tc.mixed_precision)
    main = accelerator.is_main_process
    scheme = get_scheme(dc.scheme)
    pairs = first_per_group(find_pairs(dc.resolved_root()), dc.max_per_group)
    train_pairs, val_pairs = split_by_group(pairs, dc.val_groups, dc.val_fraction, seed=dc.seed)
    train_pairs = label_budget(train_pairs, dc.label_budget, seed=dc.seed)
    bundle = load_bundle(_ddpm_dir(fc)) if mc.method != "hrnet" else None
    stats = bundle.stats if bundle else compute_band_stats([p.image for p in train_pairs + val_pairs])
    n_batches = max(1, -(-len(train_pairs) // dc.batch_size))
    train_ds = LabelledTiles(train_pairs, scheme, stats, crop_size=dc.crop_size, augment=True,
                             samples_per_epoch=n_batches * dc.batch_size, seed=tc.seed)
    val_ds = LabelledTiles(val_pairs, scheme, stats)
    set_seed(tc.seed)
    model = build_segmenter(mc, fc, scheme.num_classes, stats.bands, bundle)
    if fc.cache and mc.method != "hrnet":
        _attach_cached_features(model.extractor, fc, (train_ds, val_ds), progress and main)
    if mc.init_timm:
        model.backbone.load_state_dict(convert_timm_state_dict(load_tensors(Path(mc.init_timm)), model.backbone))
    params = [p for p in model.parameters() if p.requires_grad]
    check_writable(out, checkpoint_bytes(model, copies=3), "checkpoints (weights, optimizer)")
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    weights = _class_weights(train_ds, tc.class_weights)

    meta = {"model": asdict(mc), "features": asdict(fc), "num_classes": scheme.num_classes, "scheme": scheme.name,
            "classes": list(scheme.classes), "bands": stats.bands, "stats": stats.to_dict(), "eval_window": tc.eval_window,
            "data": {"root": str(dc.root or "embedded samples"), "train_groups": sorted({p.group for p in train_pairs}),
                     "val_groups": sorted({p.group for p in val_pairs}), "label_budget": dc.label_budget},
            "ddpm": None if bundle is None else {
                "path": "embedded" if _ddpm_dir(fc).resolve() == embedded_ddpm_dir().resolve() else str(_ddpm_dir(fc)),
                "sha256": file_hash(bundle.path / "unet" / "diffusion_pytorch_model.safetensors")}}
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
    model, optimizer = accelerator.prepare(model, optimizer)
    if weights is not None:
        weights = weights.to(accelerator.device)
    steps_per_epoch = len(train_ds) // dc.batch_size
    end = min(tc.steps, stop_after) if stop_after is not None else tc.steps
    bar = tqdm(total=tc.steps, initial=step, desc=f"fine-tuning {mc.method}", disable=not (progress and main))
    t0 = time.time()
    last_good = start

    def evaluate_now() -> dict:
        cm, _ = validate(accelerator.unwrap_model(model), val_ds, tc.eval_window, accelerator.device)
        train_mode(model, tc.norm_eval)
        return scores(cm, list(scheme.classes)).as_dict()

    while step < end:
        epoch, offset = divmod(step, steps_per_epoch)
        loader = epoch_loader(accelerator, train_ds, dc.batch_size, tc.seed, epoch, offset, tc.num_workers)
        train_mode(model, tc.norm_eval)
        for batch in loader:
            for g in optimizer.param_groups:
                g["lr"] = poly_lr(step, tc)
            with accelerator.autocast():
                logits = model(batch["image"], batch.get("streams"))
            loss = F.cross_entropy(logits.float(), batch["mask"], weight=weights, ignore_index=scheme.ignore_index)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss is {loss.item()} at step {step + 1}; last good checkpoint: "
                                       f"{last_good or 'none'}")
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            row = {"step": step, "loss": accelerator.gather(loss.detach()[None]).mean().item(),
                   "seconds": round(time.time() - t0, 1)}
            bar.update(1)
            recent = [r["loss"] for r in history[-9:]] + [row["loss"]]
            bar.set_postfix(loss=f"{np.mean(recent):.3f}", best=f"{max(best['miou'], 0):.3f}")
            if step % tc.eval_every == 0 or step == tc.steps:
                val = evaluate_now()
                row.update(val_miou=val["miou"], val_oa=val["oa"])
                if val["miou"] > best["miou"]:
                    best = {"miou": val["miou"], "step": step, "scores": val}
                    if main:
                        save_segmenter(out / "best", accelerator.unwrap_model(model), {**meta, "step": step, "val": val})
            history.append(row)
            if step % tc.checkpoint_every == 0 or step == end:
                if main:
                    last_good = save_checkpoint(ckpt_root, step, lambda d: _write_train_state(
                        d, accelerator.unwrap_model(model), optimizer, step, best, history, cfg), tc.keep_checkpoints)
                accelerator.wait_for_everyone()
            if step >= end:
                break
    bar.close()
    summary = {"method": mc.method, "steps": step, "best_miou": best["miou"], "best_step": best["step"],
               "best_scores": best.get("scores"), "history": history, "train_groups": meta["data"]["train_groups"],
               "val_groups": meta["data"]["val_groups"], "out": str(out)}
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
    with the image for training and used whole for validation.  Training no longer runs the DDPM,
    which on a CPU is most of a Diff-HRNet step."""
    from .ddpm.features import tile_features

    fx.cache_dir = Path(fc.cache_dir) if fc.cache_dir else None
    strides = [fx.info[b]["stride"] for _, b in fx.keys]
    for ds in datasets:
        items = [(p.id, torch.from_numpy(im)) for p, im in zip(ds.pairs, ds.images)]
        ds.attach_features(tile_features(fx, items, window=fc.cache_window, progress=progress), strides)


def _write_train_state(d: Path, model: nn.Module, optimizer, step: int, best: dict, history: list, cfg: ProfileConfig) -> None:
    save_tensors(d / "model.safetensors", model.trainable_state_dict())
    tensors, desc = optimizer_to_tensors(optimizer)
    save_tensors(d / "optimizer.safetensors", tensors)
    (d / "optimizer.json").write_text(json.dumps(desc))
    save_tensors(d / "rng.safetensors", {"torch": torch.get_rng_state()})
    (d / "state.json").write_text(json.dumps({"step": step, "best": best, "history": history,
                                              "config": asdict(cfg)}, indent=1, default=str))


def _load_train_state(d: Path, model: nn.Module, optimizer, cfg: ProfileConfig) -> tuple[int, dict, list]:
    state = json.loads((d / "state.json").read_text())
    saved = state["config"]
    for section, key in (("model", "method"), ("model", "variant"), ("model", "stages"), ("model", "fusion"),
                         ("data", "batch_size"), ("train", "seed")):
        have, want = saved[section][key], getattr(getattr(cfg, section), key)
        if have != want:
            raise ConfigError(f"{d}: checkpoint has {section}.{key}={have!r} but this run has {want!r}; resume with the "
                              "same settings or use a new output folder")
    model.load_state_dict(load_tensors(d / "model.safetensors"), strict=False)
    optimizer_from_tensors(optimizer, load_tensors(d / "optimizer.safetensors"), json.loads((d / "optimizer.json").read_text()))
    torch.set_rng_state(load_tensors(d / "rng.safetensors")["torch"])
    return int(state["step"]), state["best"], state["history"]


# -- evaluation -----------------------------------------------------------------------------------
def evaluate(checkpoint: str | os.PathLike, data: str | os.PathLike, out_dir: str | os.PathLike,
             window: int | None = None, ddpm_path: str | os.PathLike | None = None, progress: bool = True) -> dict[str, Any]:
    """Predict every tile of ``data`` (``images/`` [+ ``masks/``], or a plain folder of tiles).

    Writes ``pred/<id>.tif`` (georeferenced like the input) and ``pred/<id>.png`` (colours); with
    masks, also ``metrics.json`` (per-class IoU and F1, mIoU, OA over all tiles).
    """
    out = check_writable(out_dir)
    model, meta = load_segmenter(checkpoint, ddpm_path)
    scheme = get_scheme(meta["scheme"])
    stats = BandStats.from_dict(meta["stats"])
    data = Path(data)
    if (data / "images").is_dir():
        pairs = find_pairs(data, require_masks=False)
        items = [(p.image, p.mask, p.id) for p in pairs]
    elif (data / "labelled" / "images").is_dir():  # the embedded samples' root
        items = [(p.image, p.mask, p.id) for p in find_pairs(data / "labelled", require_masks=False)]
    else:
        items = [(f, None, f.relative_to(data).with_suffix("").as_posix()) for f in list_tiles(data)]
    window = window or int(meta.get("eval_window") or 128)
    k = scheme.num_classes
    cm = torch.zeros(k, k, dtype=torch.int64)
    n_labelled = 0
    for image, mask, tid in tqdm(items, desc="evaluating", disable=not progress):
        tile = read_tile(image, expected_bands=meta["bands"])
        x = torch.from_numpy(stats.normalise(tile.image, str(image)))
        with torch.no_grad():
            pred = predict_sliding(lambda b: model(b), x, window=window, overlap=0.25).argmax(0)
        write_prediction(pred.numpy(), scheme, tile, out / "pred" / f"{tid}.tif", out / "pred" / f"{tid}.png")
        if mask is not None:
            truth = torch.from_numpy(read_mask(mask, scheme))
            if truth.shape != pred.shape:
                raise DataError(f"{image}: image is {tuple(pred.shape)} but its mask {mask} is {tuple(truth.shape)}")
            cm += confusion_matrix(pred, truth, k, scheme.ignore_index)
            n_labelled += 1
    result: dict[str, Any] = {"checkpoint": str(checkpoint), "data": str(data), "tiles": len(items),
                              "labelled_tiles": n_labelled, "predictions": str(out / "pred")}
    if n_labelled:
        result.update(scores(cm, list(scheme.classes)).as_dict())
        result["confusion"] = cm.tolist()
        atomic_write_json(out / "metrics.json", result)
    return result
