"""Segmentation models: our HRNetV2 and Diff-HRNet (DDPM features fused into its branches)."""

from .fusion import DDPMPixelClassifier, DiffHRNet, FusionPoint, parse_stages
from .hrnet import VARIANTS, HRNetBackbone, HRNetV2Head, convert_timm_state_dict

__all__ = ["DDPMPixelClassifier", "DiffHRNet", "FusionPoint", "HRNetBackbone", "HRNetV2Head", "VARIANTS",
           "convert_timm_state_dict", "parse_stages"]
