"""``make demo``: the main job on the embedded samples.

For now: make sure the embedded samples are exactly what the generator makes (regenerating them
when missing), then draw the labelled tiles beside their masks.  Later stages (DDPM features,
fine-tuning, the report) plug in here.
"""

from __future__ import annotations

from pathlib import Path

from .config import samples_dir
from .data.datasets import find_pairs
from .data.io import read_mask, read_tile
from .data.labels import SAMPLES
from .data.samples import generate_samples, verify_samples
from .errors import DataError
from .fileio import atomic_write_text, check_writable
from .viz import plot_tiles_and_masks, save_figure


def run_demo(out_dir: str | Path = "runs/demo", data_dir: str | Path | None = None) -> Path:
    out = check_writable(out_dir)
    data = Path(data_dir) if data_dir else samples_dir()
    if not (data / "manifest.json").exists():
        print(f"[demo] {data} has no samples yet: generating them")
        generate_samples(data)
    problems = verify_samples(data)
    if problems:
        raise DataError("embedded samples differ from the generator's output:\n  " + "\n  ".join(problems[:10])
                        + "\nRegenerate them with: diffhrnet-lab samples --out " + str(data))
    print(f"[demo] {data}: samples verified against the generator")
    pairs = find_pairs(data / "labelled")
    images = [read_tile(p.image).image for p in pairs]
    masks = [read_mask(p.mask, SAMPLES) for p in pairs]
    fig = plot_tiles_and_masks(images, masks, SAMPLES, titles=[p.id for p in pairs], cols=5)
    fig_path = save_figure(fig, out / "samples.png")
    atomic_write_text(out / "report.md", "# diffhrnet_lab demo\n\n## Embedded samples\n\n"
                      f"{len(pairs)} labelled tiles from `{data}`, verified against the generator.\n\n"
                      "![tiles and masks](samples.png)\n")
    print(f"[demo] wrote {fig_path}")
    return fig_path
