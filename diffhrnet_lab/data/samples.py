"""The embedded sample dataset: synthetic aerial scenes, deterministic from a seed.

Why synthetic: the kit must run offline with no download, and redistributable real imagery with
dense labels is rare.  The scenes imitate what makes very-high-resolution (0.5 m) aerial
segmentation hard: roofs whose two slopes differ in brightness, cast shadows that darken ground of
*any* class (labels keep the class under the shadow, as in ISPRS ground truth), trees overhanging
nothing but with textured canopies close in colour to low vegetation, cars that are a few pixels
long, water and shadow that are both dark.  A fourth band imitates near infrared (NIR), in which
vegetation is bright and water dark, so multi-band code paths are exercised.

Every random choice comes from one ``numpy.random.Generator`` seeded per scene, and only
arithmetic (no library resampling) is used, so the same seed gives the same pixels.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from affine import Affine
from tqdm.auto import tqdm

from ..fileio import atomic_write_json, atomic_write_text
from .io import read_tile, write_geotiff
from .labels import SAMPLES

GENERATOR_VERSION = 1
CRS = "EPSG:32640"  # WGS 84 / UTM zone 40N (the Gulf): any projected CRS in metres would do
PIXEL_SIZE_M = 0.5
BANDS = ("red", "green", "blue", "nir")

IMP, BLD, LVEG, TREE, CAR, WATER, SOIL = range(7)

# Surface reflectance-like colours (R, G, B, NIR) in 0..255.
_GRASS = np.array([92, 132, 62, 175], np.float32)
_SOIL = np.array([168, 136, 102, 120], np.float32)
_WATER = np.array([34, 66, 86, 14], np.float32)
_ASPHALT = np.array([92, 94, 99, 70], np.float32)
_PAVING = np.array([150, 146, 138, 95], np.float32)
_TREE = np.array([46, 88, 40, 205], np.float32)
_ROOFS = np.array([[176, 86, 62, 90], [150, 150, 156, 85], [212, 206, 196, 110], [96, 90, 86, 60],
                   [120, 132, 150, 80]], np.float32)
_CARS = np.array([[235, 235, 235, 200], [28, 28, 30, 20], [180, 30, 30, 60], [40, 60, 150, 40],
                  [160, 162, 168, 120]], np.float32)


@dataclass(frozen=True)
class SampleSpec:
    """What ``generate_samples`` writes; the defaults are the committed ``data_samples/``."""

    seed: int = 2024
    n_labelled: int = 10
    n_unlabelled: int = 64
    labelled_size: int = 256
    unlabelled_size: int = 192


# -- noise and geometry helpers -----------------------------------------------------------------
def _value_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a coarse random lattice, bilinearly interpolated."""
    gh, gw = h // cell + 2, w // cell + 2
    grid = rng.random((gh, gw), dtype=np.float32)
    y = np.arange(h, dtype=np.float32) / cell
    x = np.arange(w, dtype=np.float32) / cell
    y0, x0 = y.astype(np.int64), x.astype(np.int64)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)  # smoothstep: no lattice creases
    a, b = grid[y0][:, x0], grid[y0][:, x0 + 1]
    c, d = grid[y0 + 1][:, x0], grid[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _fractal(rng: np.random.Generator, h: int, w: int, cells: tuple[int, ...]) -> np.ndarray:
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for c in cells:
        out += amp * _value_noise(rng, h, w, c)
        total += amp
        amp *= 0.5
    return out / total


def _shift(a: np.ndarray, dy: int, dx: int, fill: float = 0) -> np.ndarray:
    out = np.full_like(a, fill)
    h, w = a.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = a[ys, xs]
    return out


def _box_blur(a: np.ndarray) -> np.ndarray:
    p = np.pad(a, ((1, 1), (1, 1)) + ((0, 0),) * (a.ndim - 2), mode="edge")
    return sum(p[i:i + a.shape[0], j:j + a.shape[1]] for i in range(3) for j in range(3)) / 9.0


# -- the scene ------------------------------------------------------------------------------------
def render_scene(rng: np.random.Generator, size: int | tuple[int, int] = 256,
                 kind: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One aerial scene: ``uint8 (4, H, W)`` image (R, G, B, NIR) and ``uint8 (H, W)`` class mask.

    ``kind`` is ``urban``, ``suburban`` or ``rural`` (random when ``None``); it sets how many
    roads, buildings and trees there are.
    """
    h, w = (size, size) if isinstance(size, int) else size
    kind = kind or ("urban", "suburban", "rural")[int(rng.integers(3))]
    n_roads, n_bld, n_tree_clusters, p_water = {
        "urban": (3, 26, 4, 0.3), "suburban": (2, 14, 9, 0.5), "rural": (1, 4, 12, 0.8),
    }[kind]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    label = np.full((h, w), LVEG, np.uint8)
    height = np.zeros((h, w), np.float32)

    # Ground: grass mottled by low-frequency noise; bare soil where a second noise field is high.
    mottle = _fractal(rng, h, w, (48, 16, 6))
    colour = _GRASS[None, None] * (0.75 + 0.5 * mottle)[..., None]
    soil = _fractal(rng, h, w, (64, 24)) > (0.62 if kind != "rural" else 0.56)
    label[soil] = SOIL
    colour[soil] = _SOIL * (0.85 + 0.3 * mottle[soil])[..., None]
    # Field stripes in rural scenes: ploughed soil has a direction.
    if kind == "rural":
        stripe = 0.92 + 0.08 * np.sin((xx * 0.6 + yy * 0.35) * np.float32(1.3))
        colour[soil] *= stripe[soil][..., None]

    # Water: a meandering river or a pond.
    if rng.random() < p_water:
        if rng.random() < 0.5:
            base, amp, freq, phase = rng.uniform(0.2, 0.8) * h, rng.uniform(6, 20), rng.uniform(0.01, 0.03), rng.uniform(0, 6.28)
            half = rng.uniform(7, 15)
            centre = base + amp * np.sin(xx * np.float32(freq) + np.float32(phase))
            water = np.abs(yy - centre) < half
        else:
            cy, cx, r = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w, rng.uniform(18, 40)
            wobble = _fractal(rng, h, w, (24, 8)) * 14
            water = np.hypot(yy - cy, xx - cx) + wobble < r
        label[water] = WATER
        ripple = _fractal(rng, h, w, (6, 3))
        colour[water] = _WATER * (0.9 + 0.2 * ripple[water])[..., None]

    # Roads: straight carriageways at random positions and angles, with dashed centre markings.
    roads: list[tuple[float, float, float, float, float]] = []
    for _ in range(n_roads):
        theta = float(rng.choice([0.0, np.pi / 2, rng.uniform(0, np.pi)]))
        py, px = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
        width = float(rng.uniform(11, 17))
        across = (xx - px) * np.float32(np.sin(theta)) - (yy - py) * np.float32(np.cos(theta))
        along = (xx - px) * np.float32(np.cos(theta)) + (yy - py) * np.float32(np.sin(theta))
        road = np.abs(across) < width / 2
        kerb = (np.abs(across) < width / 2 + 3) & ~road & (label != WATER)
        label[kerb] = IMP
        colour[kerb] = _PAVING * (0.9 + 0.15 * mottle[kerb])[..., None]
        label[road] = IMP
        grain = _fractal(rng, h, w, (4, 2))
        colour[road] = _ASPHALT * (0.9 + 0.2 * grain[road])[..., None]
        marking = road & (np.abs(across) < 0.8) & (np.mod(along, 14) < 7)
        colour[marking] = (228, 228, 222, 150)
        roads.append((theta, py, px, width, 0.0))

    free = lambda m: not np.any(m & (label != LVEG) & (label != SOIL))  # noqa: E731

    # Buildings: rectangles on free ground, roofs shaded by slope, flat roofs with parapets.
    placed = 0
    for _ in range(n_bld * 8):
        if placed >= n_bld:
            break
        bh, bw = (int(v) for v in rng.integers(14, 42, size=2))
        y0, x0 = int(rng.integers(0, max(1, h - bh))), int(rng.integers(0, max(1, w - bw)))
        box = (yy >= y0 - 3) & (yy < y0 + bh + 3) & (xx >= x0 - 3) & (xx < x0 + bw + 3)
        if not free(box):
            continue
        fp = (yy >= y0) & (yy < y0 + bh) & (xx >= x0) & (xx < x0 + bw)
        roof = _ROOFS[int(rng.integers(len(_ROOFS)))] * np.float32(rng.uniform(0.9, 1.1))
        style = int(rng.integers(3))
        if style == 0:  # gable: ridge along the long side, sunlit and shaded slopes
            if bw >= bh:
                shade = np.where(yy < y0 + bh / 2, 1.18, 0.78)
            else:
                shade = np.where(xx < x0 + bw / 2, 1.18, 0.78)
        elif style == 1:  # hip: four facets
            dy, dx = (yy - (y0 + bh / 2)) / bh, (xx - (x0 + bw / 2)) / bw
            shade = np.where(np.abs(dy) > np.abs(dx), np.where(dy < 0, 1.2, 0.8), np.where(dx < 0, 1.05, 0.9))
        else:  # flat with a darker parapet and a few rooftop units
            inner = (yy >= y0 + 2) & (yy < y0 + bh - 2) & (xx >= x0 + 2) & (xx < x0 + bw - 2)
            shade = np.where(inner, 1.0, 0.8)
            for _ in range(int(rng.integers(0, 3))):
                uy, ux = y0 + int(rng.integers(3, max(4, bh - 6))), x0 + int(rng.integers(3, max(4, bw - 6)))
                unit = (yy >= uy) & (yy < uy + 3) & (xx >= ux) & (xx < ux + 4) & fp
                shade = np.where(unit, 1.35, shade)
                height[unit] += 1.5
        colour[fp] = roof * shade[fp].astype(np.float32)[..., None]
        label[fp] = BLD
        height[fp] += np.float32(rng.uniform(4, 16) / PIXEL_SIZE_M * 0.35)
        placed += 1

    # Trees: clustered round canopies with textured crowns, lit from the sun's side.
    canopy_tex = _fractal(rng, h, w, (3, 2))
    for _ in range(n_tree_clusters):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        for _ in range(int(rng.integers(3, 10))):
            ty, tx = cy + rng.normal(0, 14), cx + rng.normal(0, 14)
            r = float(rng.uniform(3.5, 8.5))
            d = np.hypot(yy - np.float32(ty), xx - np.float32(tx))
            crown = (d < r) & ((label == LVEG) | (label == SOIL) | (label == TREE))
            if not crown.any():
                continue
            light = 1.0 + 0.35 * np.clip(((xx - tx) * -0.7 + (yy - ty) * -0.7) / r, -1, 1)
            colour[crown] = _TREE * (light * (0.7 + 0.6 * canopy_tex))[crown][..., None]
            label[crown] = TREE
            dome = np.sqrt(np.clip(1 - (d / r) ** 2, 0, 1)) * r * 0.8 + r * 0.8
            height = np.where(crown, np.maximum(height, dome), height)

    # Cars: 4 x 9 px boxes in the lanes of each road, aligned with it, windscreen darker.
    for theta, py, px, width, _ in roads:
        c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
        for _ in range(int(rng.integers(2, 7))):
            t = rng.uniform(-max(h, w), max(h, w))
            lane = width / 4 * (1 if rng.random() < 0.5 else -1)
            cy, cx = py + t * s - lane * c, px + t * c + lane * s
            along = (xx - np.float32(cx)) * c + (yy - np.float32(cy)) * s
            across = (xx - np.float32(cx)) * s - (yy - np.float32(cy)) * c
            body = (np.abs(along) < 4.5) & (np.abs(across) < 2.0) & (label == IMP)
            if body.sum() < 20:
                continue
            paint = _CARS[int(rng.integers(len(_CARS)))]
            colour[body] = paint
            screen = body & (along > 0.8) & (along < 2.2)
            colour[screen] = paint * 0.35
            label[body] = CAR
            height[body] = np.maximum(height[body], 3.0)

    # Cast shadows from the height field: a pixel is shaded when something between it and the sun
    # rises above the sun ray.  The sun stands to the upper left, as is usual in aerial surveys.
    az = rng.uniform(0.6, 1.0)
    sdy, sdx = np.sin(az), np.cos(az)
    slope = np.float32(rng.uniform(0.6, 0.9))
    shadow = np.zeros((h, w), bool)
    for step in range(1, 40):
        oy, ox = int(round(step * sdy)), int(round(step * sdx))
        shadow |= _shift(height, oy, ox) - np.float32(step) * slope > height + 0.5
    colour[shadow] *= np.array([0.42, 0.45, 0.55, 0.4], np.float32)

    # Sensor: slight optical blur and noise, then 8-bit quantisation.
    colour = 0.5 * colour + 0.5 * _box_blur(colour)
    colour += rng.normal(0, 2.0, size=colour.shape).astype(np.float32)
    image = np.clip(np.rint(colour), 0, 255).astype(np.uint8)
    return np.moveaxis(image, -1, 0).copy(), label


def scene_transform(index: int, size: int, group: int) -> Affine:
    """Each scene sits in its own 1 km cell of UTM 40N, so tiles never overlap on the ground."""
    return Affine.translation(300_000 + 1000 * index, 2_800_000 - 1000 * group) @ Affine.scale(PIXEL_SIZE_M, -PIXEL_SIZE_M)


def _scene_rng(seed: int, group: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, group, index])


def _kind(index: int) -> str:
    return ("urban", "suburban", "rural")[index % 3]


def generate_samples(out_dir: str | Path, spec: SampleSpec = SampleSpec(), progress: bool = True) -> Path:
    """Write the labelled tiles, their masks and the unlabelled pool under ``out_dir``.

    Layout: ``labelled/images/scene_NN.tif`` (uint8, 4 bands, georeferenced),
    ``labelled/masks/scene_NN.tif`` (uint8 class indices of the ``samples`` scheme, with a colour
    table), ``unlabelled/pool_NNN.tif`` and ``manifest.json`` (spec, scheme, class pixel counts).
    """
    out = Path(out_dir)
    counts = np.zeros(SAMPLES.num_classes, np.int64)
    colormap = {i: tuple(c) for i, c in enumerate(SAMPLES.colors)}
    jobs: list[tuple[str, int]] = [("labelled", i) for i in range(spec.n_labelled)]
    jobs += [("unlabelled", i) for i in range(spec.n_unlabelled)]
    for group, i in tqdm(jobs, desc="generating samples", disable=not progress):
        if group == "labelled":
            image, mask = render_scene(_scene_rng(spec.seed, 0, i), spec.labelled_size, _kind(i))
            tf = scene_transform(i, spec.labelled_size, 0)
            write_geotiff(out / "labelled" / "images" / f"scene_{i:02d}.tif", image, crs=CRS, transform=tf)
            write_geotiff(out / "labelled" / "masks" / f"scene_{i:02d}.tif", mask, crs=CRS, transform=tf,
                          colormap=colormap)
            counts += np.bincount(mask.ravel(), minlength=SAMPLES.num_classes)
        else:
            image, _ = render_scene(_scene_rng(spec.seed, 1, i), spec.unlabelled_size, _kind(i))
            write_geotiff(out / "unlabelled" / f"pool_{i:03d}.tif", image, crs=CRS,
                          transform=scene_transform(i, spec.unlabelled_size, 1))
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "spec": spec.__dict__,
        "bands": list(BANDS),
        "crs": CRS,
        "pixel_size_m": PIXEL_SIZE_M,
        "scheme": SAMPLES.name,
        "classes": list(SAMPLES.classes),
        "labelled_class_pixels": {c: int(n) for c, n in zip(SAMPLES.classes, counts)},
    }
    atomic_write_json(out / "manifest.json", manifest)
    if not (out / "README.md").exists():
        atomic_write_text(out / "README.md", _README)
    return out


def verify_samples(folder: str | Path, spec: SampleSpec = SampleSpec(), progress: bool = False) -> list[str]:
    """Regenerate into a temporary folder and list every file that differs from ``folder``.

    Pixels, band count, dtype, CRS and transform are compared (not file bytes: GDAL versions may
    lay out the same raster differently).  An empty list means the folder is exactly what the
    generator makes.
    """
    folder = Path(folder)
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate_samples(tmp, spec, progress=progress)
        expected = sorted(p.relative_to(fresh) for p in fresh.rglob("*.tif"))
        present = sorted(p.relative_to(folder) for p in folder.rglob("*.tif")
                         if p.relative_to(folder).parts[0] in ("labelled", "unlabelled"))
        for rel in sorted(set(expected) - set(present)):
            problems.append(f"{folder / rel}: missing")
        for rel in sorted(set(present) - set(expected)):
            problems.append(f"{folder / rel}: not made by the generator")
        for rel in sorted(set(expected) & set(present)):
            a, b = read_tile(fresh / rel), read_tile(folder / rel)
            if a.image.shape != b.image.shape or a.image.dtype != b.image.dtype:
                problems.append(f"{folder / rel}: shape/dtype {b.image.shape} {b.image.dtype}, expected {a.image.shape} {a.image.dtype}")
            elif not np.array_equal(a.image, b.image):
                n = int((a.image != b.image).sum())
                problems.append(f"{folder / rel}: {n} pixel value(s) differ from the generator's output")
            elif a.crs != b.crs or a.transform != b.transform:
                problems.append(f"{folder / rel}: georeferencing differs ({b.crs}, {b.transform})")
        fresh_manifest = json.loads((fresh / "manifest.json").read_text())
        try:
            committed = json.loads((folder / "manifest.json").read_text())
        except (OSError, ValueError):
            committed = None
        if committed != fresh_manifest:
            problems.append(f"{folder / 'manifest.json'}: missing or differs from the generator's")
    return problems


_README = """# Embedded sample data

Made by `diffhrnet-lab samples` (``diffhrnet_lab.data.samples.generate_samples``), deterministic
from the seed in `manifest.json`; `diffhrnet-lab samples --check` verifies it pixel for pixel.

- `labelled/images/scene_NN.tif`: 4-band uint8 GeoTIFF (R, G, B, NIR), 0.5 m pixels, EPSG:32640.
- `labelled/masks/scene_NN.tif`: uint8 class indices of the `samples` label scheme
  (impervious, building, low_vegetation, tree, car, water, bare_soil), with a colour table.
- `unlabelled/pool_NNN.tif`: more scenes of the same kind with no labels, for DDPM pretraining.
- `ddpm_tiny/`: a tiny DDPM pretrained on `unlabelled/` (not made by the generator; its own
  `README.md` gives the command that made it).

The scenes are synthetic: buildings with shaded roof slopes and cast shadows, roads with dashed
markings and cars, textured tree canopies, grass, bare soil and water.  Each tile is its own
scene, so splitting by tile is splitting by scene.
"""
