"""The denoising U-Net (diffusers ``UNet2DModel``), its noise schedule, and the saved bundle.

A *bundle* is a folder that holds everything needed to use a pretrained DDPM on new tiles:
``unet/`` (``save_pretrained``: config + safetensors weights), ``scheduler/`` (the noise schedule)
and ``ddpm.json`` (preset, band count, training crop size and the band statistics that map the
tiles to ``[-1, 1]``).  Without the statistics, features of a 16-bit tile would be computed on a
different input distribution than the one the DDPM learned.

A bundle is also a plain diffusers folder (``model_index.json``): ``DDPMPipeline.from_pretrained``
and ``UNet2DModel.from_pretrained(bundle / "unet")`` load it directly, so it can be shared on the
Hugging Face Hub (:func:`push_bundle`) and used by name (``load_bundle("user/repo")``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DModel

from ..data.io import BandStats
from ..errors import ConfigError, DataError
from ..fileio import atomic_dir, atomic_write_json

# Four resolution levels (stride 8) with self-attention at 1/4 resolution, as in the DDPM paper's
# CIFAR/LSUN models (Ho et al. 2020, App. B) scaled down.  Decoder block i is ``up_blocks[i]``:
# block 0 is the deepest (lowest resolution).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(  # 2.7 M parameters: CPU, 64² crops
        block_out_channels=(32, 64, 96, 96), layers_per_block=1, norm_num_groups=16, attention_head_dim=32,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    ),
    "small": dict(  # 22 M: a laptop GPU, 128² crops
        block_out_channels=(64, 128, 192, 256), layers_per_block=2, norm_num_groups=32, attention_head_dim=64,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    ),
    "base": dict(  # 111 M: a GPU, 256² crops (the size of DDPM-Seg's LSUN/FFHQ models' inputs)
        block_out_channels=(128, 256, 256, 512, 512), layers_per_block=2, norm_num_groups=32, attention_head_dim=64,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
    ),
}
SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # diffusers' file name inside unet/


def bundle_weights(folder: str | os.PathLike) -> Path:
    """The U-Net weights file of a bundle or checkpoint folder (``unet/`` inside it)."""
    return Path(folder) / "unet" / WEIGHTS_NAME


def build_unet(preset: str, bands: int, sample_size: int) -> UNet2DModel:
    if preset not in PRESETS:
        raise ConfigError(f"unknown U-Net preset '{preset}'; choose one of {', '.join(PRESETS)}")
    return UNet2DModel(sample_size=sample_size, in_channels=bands, out_channels=bands, **PRESETS[preset])


def build_scheduler(schedule: str = "linear", num_train_timesteps: int = 1000) -> DDPMScheduler:
    """DDPM noise schedule with ε-prediction (Ho et al. 2020, Eq. 14); linear β from 1e-4 to 0.02."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown beta schedule '{schedule}'; choose one of {', '.join(SCHEDULES)}")
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=SCHEDULES[schedule],
                         prediction_type="epsilon", clip_sample=True)


def unet_stride(unet: UNet2DModel) -> int:
    """Input sizes must be multiples of this: one factor 2 per down block that downsamples."""
    return 2 ** sum(1 for b in unet.down_blocks if getattr(b, "downsamplers", None))


@dataclass
class DDPMBundle:
    unet: UNet2DModel
    scheduler: DDPMScheduler
    stats: BandStats
    meta: dict[str, Any]
    path: Path | None = None

    @property
    def bands(self) -> int:
        return int(self.unet.config.in_channels)


def save_bundle(path: str | os.PathLike, unet: UNet2DModel, scheduler: DDPMScheduler, stats: BandStats,
                meta: dict[str, Any], extra_files: dict[str, Path] | None = None, half: bool = False) -> Path:
    """Write a bundle atomically: build it in a hidden sibling folder, then rename it into place.

    ``half`` stores the weights in float16 (half the size; loading casts back to float32), which
    is how the embedded checkpoint stays small.  ``extra_files`` are copied in (loss log, samples).
    """
    path = Path(path)
    with atomic_dir(path) as tmp:
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        if half:
            from safetensors.torch import load_file, save_file

            weights = bundle_weights(tmp)
            save_file({k: v.half() for k, v in load_file(weights).items()}, weights, metadata={"format": "pt"})
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)
        scheduler.save_pretrained(tmp / "scheduler")
        write_model_index(tmp)
        atomic_write_json(tmp / "ddpm.json", {**meta, "stats": stats.to_dict(), "bands": int(unet.config.in_channels)})
    return path


def write_model_index(folder: str | os.PathLike) -> Path:
    """diffusers' pipeline index, so that ``DDPMPipeline.from_pretrained(folder)`` finds ``unet/``
    and ``scheduler/`` (it ignores ``ddpm.json``, which the kit keeps for the band statistics)."""
    import diffusers

    target = Path(folder) / "model_index.json"
    atomic_write_json(target, {"_class_name": "DDPMPipeline", "_diffusers_version": diffusers.__version__,
                               "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]})
    return target


_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
BUNDLE_FILES = ["ddpm.json", "model_index.json", "unet/*", "scheduler/*", "README.md", "*.csv", "*.png"]


def fetch_bundle(spec: str | os.PathLike) -> Path:
    """A bundle folder: ``spec`` itself when it exists locally, else a Hugging Face Hub repo id
    (``user/repo``) downloaded with ``snapshot_download`` (or taken from the Hub cache when offline)."""
    path = Path(spec)
    if path.exists() or not _REPO_ID.fullmatch(str(spec)) or str(spec).startswith((".", "/")):
        return path
    import huggingface_hub

    try:
        return Path(huggingface_hub.snapshot_download(str(spec), allow_patterns=BUNDLE_FILES))
    except Exception as first:  # noqa: BLE001 - offline, unknown repo, auth: try the cache, then explain
        try:
            return Path(huggingface_hub.snapshot_download(str(spec), allow_patterns=BUNDLE_FILES,
                                                          local_files_only=True))
        except Exception:  # noqa: BLE001
            raise DataError(f"{spec}: no such local folder, and not downloadable as a Hugging Face Hub repo "
                            f"({type(first).__name__}: {str(first).splitlines()[0][:160]}) nor in the Hub "
                            "cache") from None


def push_bundle(folder: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None,
                commit_message: str = "Upload DDPM bundle (diffhrnet_lab)") -> str:
    """Upload a bundle folder to the Hub repo ``repo_id`` (created if needed); returns the commit URL.

    The folder is checked first (it must load as a bundle) and gets its ``model_index.json`` if an
    older kit wrote it, so that what is pulled back works with diffusers' ``DDPMPipeline`` too."""
    import huggingface_hub

    folder = Path(folder)
    load_bundle(folder)
    if not (folder / "model_index.json").is_file():
        write_model_index(folder)
    api = huggingface_hub.HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=commit_message,
                             allow_patterns=BUNDLE_FILES)
    return str(getattr(info, "commit_url", info))


def load_bundle(path: str | os.PathLike, device: str | torch.device = "cpu") -> DDPMBundle:
    """Load a bundle from safetensors only (never unpickles); errors name the folder.  ``path`` may
    be a Hugging Face Hub repo id (``user/repo``) when no such local folder exists."""
    path = fetch_bundle(path)
    meta_file = path / "ddpm.json"
    if not meta_file.is_file():
        raise DataError(f"{path}: not a DDPM bundle (no ddpm.json); make one with `diffhrnet-lab pretrain`")
    weights = bundle_weights(path)
    if not weights.is_file():
        raise DataError(f"{path}: no unet/{WEIGHTS_NAME} (only safetensors weights are loaded)")
    try:
        meta = json.loads(meta_file.read_text())
        unet = UNet2DModel.from_pretrained(path / "unet", use_safetensors=True, local_files_only=True,
                                           torch_dtype=torch.float32)
        scheduler = DDPMScheduler.from_pretrained(path / "scheduler", local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise DataError(f"{path}: cannot load DDPM bundle ({str(exc).splitlines()[0][:200]})") from None
    unet.to(device).eval().requires_grad_(False)
    return DDPMBundle(unet=unet, scheduler=scheduler, stats=BandStats.from_dict(meta["stats"]), meta=meta, path=path)
