"""``diffhrnet-lab``: the command line.  Each sub-command is a thin wrapper over a package function.

User errors (:class:`DataError`, :class:`ConfigError`) are printed as one line naming the file and
the problem, with exit status 2; a traceback means a bug in the kit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import ConfigError, DataError


def _cmd_samples(args: argparse.Namespace) -> int:
    from .data.samples import generate_samples, verify_samples

    if args.check:
        problems = verify_samples(args.out, progress=True)
        for p in problems:
            print(p)
        print(f"{args.out}: {'OK, identical to the generator' if not problems else f'{len(problems)} problem(s)'}")
        return 1 if problems else 0
    generate_samples(args.out)
    print(f"wrote samples to {args.out}")
    return 0


def _cmd_check_data(args: argparse.Namespace) -> int:
    """Read every image and mask once, as training would, and report per-class pixel counts."""
    from .data.datasets import LabelledTiles, find_pairs

    pairs = find_pairs(args.data, images=args.images, masks=args.masks)
    ds = LabelledTiles(pairs, args.scheme)
    counts = ds.class_pixel_counts()
    total = max(1, int(counts.sum()))
    print(f"{args.data}: {len(pairs)} tiles in {len({p.group for p in pairs})} scene(s), {ds.stats.bands} band(s), "
          f"scheme '{ds.scheme.name}'")
    for name, n in zip(ds.scheme.classes, counts):
        print(f"  {name:<16} {int(n):>12,d} px  {100 * n / total:5.1f} %")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, args.data)
    return 0


def _profile_cfg(args: argparse.Namespace):
    from .config import profile_config

    return profile_config(args.profile)


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from .config import replace
    from .ddpm.pretrain import export_bundle, pretrain

    cfg = _profile_cfg(args).ddpm
    changes = {k: v for k, v in {"preset": args.preset, "pool": args.pool and str(args.pool), "steps": args.steps,
                                 "batch_size": args.batch_size, "sample_size": args.sample_size,
                                 "beta_schedule": args.schedule, "lr": args.lr, "seed": args.seed,
                                 "mixed_precision": args.mixed_precision}.items() if v is not None}
    cfg = replace(cfg, **changes)
    final = pretrain(cfg, args.out, resume=args.resume, stop_after=args.stop_after)
    if final.exists():
        print(f"[pretrain] final bundle (EMA weights): {final}")
        if args.export:
            print(f"[pretrain] exported to {export_bundle(args.out, args.export, half=args.export_half)}")
    else:
        print(f"[pretrain] stopped; continue with --resume latest --out {args.out}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run
    from .config import check_profile, default_profile

    run(args.what, check_profile(args.profile or default_profile()), args.json)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .config import samples_dir

    p = argparse.ArgumentParser(prog="diffhrnet-lab", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("samples", help="generate (or --check) the embedded sample dataset")
    s.add_argument("--out", type=Path, default=samples_dir())
    s.add_argument("--check", action="store_true", help="verify pixel for pixel instead of writing")
    s.set_defaults(func=_cmd_samples)

    s = sub.add_parser("check-data", help="read a labelled folder as training would; report classes")
    s.add_argument("data", type=Path)
    s.add_argument("--scheme", default="samples")
    s.add_argument("--images", default="images")
    s.add_argument("--masks", default=None)
    s.set_defaults(func=_cmd_check_data)

    s = sub.add_parser("pretrain", help="pretrain a DDPM on a folder of unlabelled tiles")
    s.add_argument("--profile", default=None, help="smoke, quick or full (default: $DHL_PROFILE or quick)")
    s.add_argument("--out", type=Path, default=Path("runs/ddpm"))
    s.add_argument("--pool", type=Path, default=None, help="folder of unlabelled tiles (default: embedded pool)")
    s.add_argument("--preset", default=None, help="U-Net preset: tiny, small, base")
    s.add_argument("--steps", type=int, default=None)
    s.add_argument("--batch-size", type=int, default=None, help="global batch, split across processes")
    s.add_argument("--sample-size", type=int, default=None, help="training crop size")
    s.add_argument("--schedule", default=None, help="beta schedule: linear or cosine")
    s.add_argument("--lr", type=float, default=None)
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--mixed-precision", default=None, help="auto, no, bf16, fp16")
    s.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
    s.add_argument("--stop-after", type=int, default=None, help="end this invocation after this step")
    s.add_argument("--export", type=Path, default=None, help="copy the final bundle + loss log + samples here")
    s.add_argument("--export-half", action="store_true", help="store exported weights in float16")
    s.set_defaults(func=_cmd_pretrain)

    s = sub.add_parser("bench", help="benchmarks that print figures and ratios")
    s.add_argument("what", choices=["features"])
    s.add_argument("--profile", default=None)
    s.add_argument("--json", action="store_true", help="one JSON line")
    s.set_defaults(func=_cmd_bench)

    s = sub.add_parser("demo", help="the main job on the embedded samples")
    s.add_argument("--out", type=Path, default=Path("runs/demo"))
    s.add_argument("--data", type=Path, default=None)
    s.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (DataError, ConfigError) as exc:
        print(f"diffhrnet-lab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
