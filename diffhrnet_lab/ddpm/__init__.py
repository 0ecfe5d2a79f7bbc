"""The pretrained diffusion model: U-Net presets, pretraining, per-timestep feature extraction."""

from .unet import PRESETS, DDPMBundle, build_scheduler, build_unet, load_bundle, save_bundle, unet_stride

__all__ = ["PRESETS", "DDPMBundle", "build_scheduler", "build_unet", "load_bundle", "save_bundle", "unet_stride"]
