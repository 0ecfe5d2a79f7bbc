import json

import numpy as np

from diffhrnet_lab.data.io import read_mask, read_tile
from diffhrnet_lab.data.labels import SAMPLES
from diffhrnet_lab.data.samples import SampleSpec, generate_samples, render_scene, verify_samples


def test_committed_samples_equal_a_fresh_generation(samples_dir):
    assert verify_samples(samples_dir) == []


def test_verify_detects_a_changed_pixel(tmp_path):
    spec = SampleSpec(n_labelled=1, n_unlabelled=1, labelled_size=64, unlabelled_size=64)
    out = generate_samples(tmp_path / "s", spec, progress=False)
    assert verify_samples(out, spec) == []
    from diffhrnet_lab.data.io import write_geotiff
    t = read_tile(out / "unlabelled" / "pool_000.tif")
    t.image[0, 0, 0] ^= 1
    write_geotiff(out / "unlabelled" / "pool_000.tif", t.image, crs=t.crs, transform=t.transform)
    problems = verify_samples(out, spec)
    assert len(problems) == 1 and "pool_000.tif: 1 pixel value(s) differ" in problems[0]


def test_samples_are_georeferenced_multiband_with_all_classes(samples_dir):
    manifest = json.loads((samples_dir / "manifest.json").read_text())
    assert manifest["spec"]["n_labelled"] >= 8 and manifest["spec"]["n_unlabelled"] >= 64
    assert 256 <= manifest["spec"]["labelled_size"] <= 512
    t = read_tile(samples_dir / "labelled" / "images" / "scene_00.tif")
    assert t.bands == 4 and t.georeferenced and t.crs.to_epsg() == 32640 and t.transform.a == 0.5
    assert all(n > 0 for n in manifest["labelled_class_pixels"].values())
    # the generator's output (not the DDPM bundles, not the embedded real Dubai scenes) stays small
    size = sum(p.stat().st_size for p in samples_dir.rglob("*")
               if p.is_file() and not any(part.startswith("ddpm") or part == "dubai_aerial" for part in p.parts))
    assert size < 15e6


def test_scene_physics_shadows_darken_and_nir_separates_vegetation():
    img, mask = render_scene(np.random.default_rng(5), 256, "suburban")
    r, g, b, nir = (img[i].astype(float) for i in range(4))
    veg = (mask == 2) | (mask == 3)
    assert nir[veg].mean() > 1.5 * nir[mask == 0].mean()  # vegetation bright in NIR, roads not
    if (mask == 5).any():
        assert nir[mask == 5].mean() < 0.3 * nir[mask == 2].mean()
    grass = mask == 2
    brightness = (r + g + b)[grass]
    assert np.percentile(brightness, 2) < 0.6 * np.median(brightness)  # some grass lies in shadow
    assert (mask == 4).sum() > 0 and (mask == 4).sum() < 0.01 * mask.size  # cars: present and small


def test_each_scene_kind_differs_and_seed_is_respected():
    a = render_scene(np.random.default_rng(1), 96, "urban")
    b = render_scene(np.random.default_rng(1), 96, "urban")
    c = render_scene(np.random.default_rng(2), 96, "urban")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert render_scene(np.random.default_rng(3), (64, 100))[0].shape == (4, 64, 100)


def test_masks_read_back_through_the_scheme(samples_dir):
    m = read_mask(samples_dir / "labelled" / "masks" / "scene_01.tif", SAMPLES)
    assert m.shape == (256, 256) and m.max() < SAMPLES.num_classes
