"""Data layer: tiles → normalised tensors and class masks (the first box of the data flow)."""

from .datasets import LabelledTiles, Pair, UnlabelledPool, find_pairs, label_budget, split_by_group
from .io import BandStats, Tile, compute_band_stats, list_tiles, read_mask, read_mask_raw, read_tile, write_geotiff
from .labels import SCHEMES, LabelScheme, get_scheme
from .tiling import blend_weights, pad_to, window_starts

__all__ = [
    "BandStats", "LabelScheme", "LabelledTiles", "Pair", "SCHEMES", "Tile", "UnlabelledPool",
    "blend_weights", "compute_band_stats", "find_pairs", "get_scheme", "label_budget", "list_tiles", "pad_to",
    "read_mask", "read_mask_raw", "read_tile", "split_by_group", "window_starts", "write_geotiff",
]
