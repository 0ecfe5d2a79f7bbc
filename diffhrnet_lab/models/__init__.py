"""Segmentation models: our HRNetV2 and Diff-HRNet (DDPM features fused into its branches)."""

from .fusion import FusionPoint, parse_stages
from .hrnet import VARIANTS, HRNetBackbone, HRNetV2Head, convert_timm_state_dict
from .segmenters import SEGMENTERS, DDPMPixelClassifier, DiffHRNet, build_segmenter, load_segmenter, save_segmenter

__all__ = ["DDPMPixelClassifier", "DiffHRNet", "FusionPoint", "HRNetBackbone", "HRNetV2Head", "VARIANTS",
           "convert_timm_state_dict", "parse_stages", "SEGMENTERS", "build_segmenter", "load_segmenter",
           "save_segmenter"]
