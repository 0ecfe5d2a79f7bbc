"""``diffhrnet-lab bench``: what each benchmark reports (not how fast: the figures are in BENCHMARKS.md).

Times vary; what must hold on any machine is that each derived figure is the quotient of the
reported times it names (an inverted ratio, or one taken from the wrong pair, fails here)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def _bench(which: str) -> dict:
    r = subprocess.run([sys.executable, "-m", "diffhrnet_lab.cli", "bench", which, "--profile", "smoke", "--json"],
                       capture_output=True, text=True, check=True)
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, r.stdout
    return json.loads(lines[0])


def _quotient(a: float, b: float, decimals: int = 3):
    """``a / b`` of two figures rounded to 4 decimals (each off by up to 5e-5), itself reported
    rounded to ``decimals``."""
    lo, hi = (a - 5e-5) / (b + 5e-5), (a + 5e-5) / (b - 5e-5)
    return pytest.approx((lo + hi) / 2, abs=(hi - lo) / 2 + 0.5 * 10 ** -decimals + 1e-9)


def test_bench_features_prints_one_json_line_with_exact_features():
    out = _bench("features")
    assert out["max_abs_diff"] < 1e-4
    assert out["speedup"] == _quotient(out["naive_s"], out["fast_s"])
    assert out["images_per_s"] == _quotient(out["batch"], out["fast_s"], decimals=2)
    assert out["naive_images_per_s"] == _quotient(out["batch"], out["naive_s"], decimals=2)
    assert out["timesteps"] == [50, 150, 250] and set(out["stream_peak_rss_mb"]) == {"1", "8", "32"}
    rss = out["stream_peak_rss_mb"]
    assert out["stream_rss_growth_1_to_32"] == pytest.approx(rss["32"] / rss["1"], abs=2e-3)


def test_bench_diffhrnet_reports_step_ratios_with_and_without_the_feature_cache():
    out = _bench("diffhrnet")
    ratios = out["step_ratio_vs_hrnet"]
    assert set(ratios) == {"without_cache", "with_cache"}
    assert ratios["without_cache"] == _quotient(out["diffhrnet_s"], out["hrnet_s"])
    assert ratios["with_cache"] == _quotient(out["diffhrnet_cached_s"], out["hrnet_s"])
    assert out["stages"] == "multistage" and out["fusion"] == "gated"
