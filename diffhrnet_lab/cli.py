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
