"""The diffusion model itself: U-Net presets, noise schedule, saved bundles, sampling.

Its training loop is ``training.pretrain``; what Diff-HRNet takes from it is ``features/``."""

from .unet import PRESETS, WEIGHTS_NAME, DDPMBundle, build_scheduler, build_unet, bundle_weights, load_bundle, save_bundle, unet_stride

__all__ = ["PRESETS", "WEIGHTS_NAME", "bundle_weights", "DDPMBundle", "build_scheduler", "build_unet", "load_bundle", "save_bundle", "unet_stride"]
