"""Round 13 of BENCHMARKS.md: HRNet's backbone distilled from the DDPM's decoder features on the
unlabelled images (``diffhrnet_lab.training.distill``), for ``model.init_timm``.

    python benchmarks/distill_backbone.py --data data_samples/dubai_aerial --ddpm data_samples/ddpm_dubai \
        --cache runs/dubai_feature_cache --out runs/distill_dubai [--steps 600]
"""

from __future__ import annotations

import argparse
import json

from diffhrnet_lab.training.distill import DistillConfig, distill_from_folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--ddpm", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", default="")
    ap.add_argument("--steps", type=int, default=DistillConfig.steps)
    a = ap.parse_args()
    summary = distill_from_folder(a.data, a.ddpm, a.out, cache_dir=a.cache or None, cfg=DistillConfig(steps=a.steps))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
