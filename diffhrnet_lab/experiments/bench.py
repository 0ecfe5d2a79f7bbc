"""Benchmarks that print JSON: figures and ratios measured in one run, never asserted in tests.

``make bench`` runs them all (``all``) and writes ``results/bench.json``.  Targets on the 2-core
CPU: features speedup >= 2 with memory flat within 25 %, HRNet <= 1.1x timm.

``features``: the batched, early-exit extractor against the naive way (one full U-Net forward per
timestep over the same batch, with hooks, as DDPM-Seg does) on the same images, alternating the two
so that machine noise hits both alike; plus peak resident memory when streaming 1, 8 and 32 images
through the extractor, each in a fresh process (peak RSS only grows within a process).
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

from ..config import embedded_ddpm_dir, profile_config, samples_dir

_SETTINGS = {  # images per batch, crop size, repeats
    "smoke": (4, 64, 3),
    "quick": (8, 128, 5),
    "full": (16, 256, 7),
}


def _images(n: int, size: int) -> torch.Tensor:
    from ..data.datasets import LabelledTiles, find_pairs

    ds = LabelledTiles(find_pairs(samples_dir() / "labelled"), "samples", crop_size=size, seed=0)
    return torch.stack([ds[i]["image"] for i in range(n)])


def _extractor(profile: str):
    from ..features.extractor import FeatureExtractor
    from ..ddpm.unet import build_scheduler, build_unet, load_bundle

    fc = profile_config(profile).features
    if (embedded_ddpm_dir() / "ddpm.json").exists():
        b = load_bundle(embedded_ddpm_dir())
        return FeatureExtractor.from_bundle(b, fc.timesteps, fc.blocks), "embedded tiny"
    torch.manual_seed(0)
    return FeatureExtractor(build_unet("tiny", 4, 64).eval(), build_scheduler(), fc.timesteps, fc.blocks), "untrained tiny"


def peak_rss_mb() -> float:
    """This process's peak resident memory (MB).  On Linux ``VmHWM`` of ``/proc/self/status``:
    ``getrusage``'s ``ru_maxrss`` survives ``exec``, so a child started by a big parent would report
    the parent's peak instead of its own."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def stream_peak_rss(counts=(1, 8, 32), size: int = 128, batch: int = 1, profile: str = "smoke") -> dict[str, float]:
    """Peak RSS (MB) of one fresh process after streaming 1, 8, 32 images through the extractor.

    The peak only grows within a process, so reading it after each count measures how memory
    grows with the number of images processed: flat if nothing is kept per image.  ``"loaded"`` is
    the peak before the first image (Python, torch, the model, the sample tiles).
    """
    code = (
        "import torch, json; from diffhrnet_lab.bench import _extractor, _images, peak_rss_mb\n"
        f"fx, _ = _extractor({profile!r}); imgs = _images(1, {size}); out = {{'loaded': peak_rss_mb()}}\n"
        f"for i in range(0, {max(counts)}, {batch}):\n"
        f"    feats = fx(imgs.repeat({batch}, 1, 1, 1) + 0.001 * i); del feats\n"
        f"    if i + {batch} in {tuple(counts)!r}: out[str(i + {batch})] = peak_rss_mb()\n"
        "print(json.dumps(out))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {k: round(v, 1) for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def bench_features(profile: str = "smoke") -> dict[str, Any]:
    n, size, repeats = _SETTINGS[profile]
    torch.manual_seed(0)
    fx, which = _extractor(profile)
    x = _images(n, size)
    fast, naive = fx(x), fx.naive(x)  # warm-up, and the comparison
    diff = max((fast[k] - naive[k]).abs().max().item() for k in fast)
    t_fast, t_naive = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fx(x)
        t_fast.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fx.naive(x)
        t_naive.append(time.perf_counter() - t0)
    fast_s, naive_s = statistics.median(t_fast), statistics.median(t_naive)
    rss = stream_peak_rss((1, 8, 32), size, batch=1, profile=profile)
    loaded = rss.pop("loaded")
    return {
        "bench": "features", "profile": profile, "model": which, "device": str(x.device),
        "timesteps": list(fx.timesteps), "blocks": list(fx.blocks), "batch": n, "size": size,
        "fast_s": round(fast_s, 4), "naive_s": round(naive_s, 4), "speedup": round(naive_s / fast_s, 3),
        "max_abs_diff": diff, "images_per_s": round(n / fast_s, 2), "naive_images_per_s": round(n / naive_s, 2),
        "process_peak_rss_mb": round(peak_rss_mb(), 1), "peak_rss_mb": rss, "stream_peak_rss_mb": rss,
        "stream_rss_before_first_image_mb": loaded,
        "stream_rss_growth_1_to_32": round(rss["32"] / rss["1"], 3),
        "threads": torch.get_num_threads(),
    }


def _alternate(fns: dict[str, Any], repeats: int) -> dict[str, float]:
    """Median seconds of each callable, called in turn ``repeats`` times after one warm-up each, so
    that machine noise (other processes, frequency scaling) hits all of them alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _train_step(model, x, y, streams=None):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        loss = torch.nn.functional.cross_entropy(model(x) if streams is None else model(x, streams), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_hrnet(profile: str = "smoke", variant: str | None = None) -> dict[str, Any]:
    """Our HRNetV2 backbone against timm's (``features_only``) of the same variant: forward + backward
    on the same input and batch, timed alternately."""
    import timm

    from ..models.hrnet import TIMM_NAMES, HRNetBackbone

    cfg = profile_config(profile)
    variant = variant or cfg.model.variant
    n, size, repeats = cfg.data.batch_size, cfg.data.crop_size, _SETTINGS[profile][2]
    torch.manual_seed(0)
    ours = HRNetBackbone(variant, 3).train()
    ref = timm.create_model(TIMM_NAMES[variant], pretrained=False, features_only=True, feature_location="").train()
    x = torch.randn(n, 3, size, size)

    def fwd_bwd(m):
        return lambda: sum(f.float().mean() for f in m(x)).backward()

    t = _alternate({"ours": fwd_bwd(ours), "timm": fwd_bwd(ref)}, repeats)
    return {"variant": variant, "batch": n, "size": size, "ours_s": round(t["ours"], 4), "timm_s": round(t["timm"], 4),
            "time_ratio_vs_timm": round(t["ours"] / t["timm"], 3)}


def bench_diffhrnet(profile: str = "smoke") -> dict[str, Any]:
    """A Diff-HRNet (multistage, gated) train step over an HRNet-only one at the same batch: with the
    DDPM run inside the step, and with the feature cache (features precomputed, as
    ``features.cache`` does)."""
    from ..models.segmenters import DiffHRNet

    cfg = profile_config(profile)
    n, size, repeats = cfg.data.batch_size, cfg.data.crop_size, _SETTINGS[profile][2]
    fx, which = _extractor(profile)
    torch.manual_seed(0)
    x, y = _images(n, size), torch.randint(0, 7, (n, size, size))
    hrnet = DiffHRNet(7, 4, cfg.model.variant).train()
    diff = DiffHRNet(7, 4, cfg.model.variant, fx, cfg.model.stages, cfg.model.fusion,
                     feature_norm=cfg.model.feature_norm).train()
    with torch.no_grad():
        feats = fx.compute(x)
    streams = [feats[k] for k in fx.keys]
    t = _alternate({"hrnet": _train_step(hrnet, x, y), "diffhrnet": _train_step(diff, x, y),
                    "diffhrnet_cached": _train_step(diff, x, y, streams)}, repeats)
    return {"ddpm": which, "variant": cfg.model.variant, "stages": cfg.model.stages, "fusion": cfg.model.fusion,
            "batch": n, "size": size, **{f"{k}_s": round(v, 4) for k, v in t.items()},
            "step_ratio_vs_hrnet": {"without_cache": round(t["diffhrnet"] / t["hrnet"], 3),
                                    "with_cache": round(t["diffhrnet_cached"] / t["hrnet"], 3)}}


def bench_demo(profile: str = "quick", runs: int = 2) -> dict[str, Any]:
    """The main job's wall time, run ``runs`` times from scratch with the same seed: the metrics
    must be identical (determinism on CPU)."""
    import tempfile
    from pathlib import Path

    from .demo import run_demo

    walls, results = [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as d:
            run_demo(Path(d) / "demo", profile=profile, progress=False)
            r = json.loads((Path(d) / "demo" / "results.json").read_text())
        walls.append(r.pop("wall_s"))
        results.append(r)
    return {"profile": profile, "wall_s": walls[0], "wall_s_runs": walls,
            "miou": {m: results[0][m]["miou"] for m in ("HRNet", "Diff-HRNet")},
            "identical_metrics_across_runs": all(r == results[0] for r in results)}


def bench_all(profile: str = "smoke", demo_profile: str = "quick", out: str = "results/bench.json") -> dict[str, Any]:
    from ..fileio import atomic_write_json

    from .pipeline_bench import bench_pipeline

    result = {"features": bench_features(profile), "hrnet": bench_hrnet(profile), "pipeline": bench_pipeline(demo_profile),
              "diffhrnet": bench_diffhrnet(profile), "demo": bench_demo(demo_profile),
              "machine": {"threads": torch.get_num_threads(), "torch": torch.__version__,
                          "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}}
    f = result["features"]
    result["targets"] = {"features_speedup_ge_2": f["speedup"] >= 2,
                         "features_memory_flat_within_25pct": f["stream_rss_growth_1_to_32"] <= 1.25,
                         "hrnet_le_1_1x_timm": result["hrnet"]["time_ratio_vs_timm"] <= 1.1,
                         "demo_deterministic": result["demo"]["identical_metrics_across_runs"]}
    atomic_write_json(out, result)
    return result


BENCHES = {"features": bench_features, "hrnet": bench_hrnet, "diffhrnet": bench_diffhrnet}


def run(what: str, profile: str, as_json: bool) -> dict[str, Any]:
    if what == "all":
        result = bench_all(profile)
    elif what == "demo":
        result = bench_demo(profile)
    elif what == "pipeline":
        from .pipeline_bench import bench_pipeline

        result = bench_pipeline(profile)
    elif what in BENCHES:
        result = BENCHES[what](profile)
    else:
        from ..errors import ConfigError

        raise ConfigError(f"unknown benchmark '{what}'; available: all, demo, pipeline, {', '.join(BENCHES)}")
    if as_json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>26}: {v}")
    return result
