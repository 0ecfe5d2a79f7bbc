"""Diff-HRNet teaching kit: DDPM features fused into HRNet for remote-sensing segmentation."""

__version__ = "0.1.0"
