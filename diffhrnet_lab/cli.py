"""``diffhrnet-lab``: the command line.  Each sub-command is a thin wrapper over a package function.

User errors (:class:`DataError`, :class:`ConfigError`) are printed as one line naming the file and
the problem, with exit status 2; a traceback means a bug in the kit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import ConfigError, DataError


def _command(args: argparse.Namespace) -> str:
    """The command line as typed (recorded in exported bundles and experiment results)."""
    import shlex

    argv = getattr(args, "argv", None)
    return "diffhrnet-lab " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))


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
    """Read every image and mask once, as training would, and report per-class pixel counts and,
    for a named ``--dataset``, the layout form found and its official splits."""
    from .data.datasets import LabelledTiles, find_pairs
    from .data.layouts import resolve_dataset

    if args.dataset:
        rd = resolve_dataset(args.data, args.dataset)
        pairs = rd.labelled
        print(f"{args.data}: {rd.layout.title}, {rd.form} form; {len(rd.pairs)} image(s), {len(pairs)} with masks")
        for name in rd.split_names() or [""]:
            sp = [p for p in rd.pairs if rd.splits.get(p.id, "") == name]
            print(f"  split {name or '(none)':<6} {len(sp):>6} image(s) ({sum(p.mask is not None for p in sp)} "
                  f"labelled) in {len({p.group for p in sp})} scene(s)")
        if not rd.split_names():
            print("  no official split: fine-tuning splits by scene (data.val_groups / data.val_fraction)")
        scheme = rd.scheme
    else:
        pairs, scheme = find_pairs(args.data, images=args.images, masks=args.masks), args.scheme
    ds = LabelledTiles(pairs, scheme)
    counts = ds.class_pixel_counts()
    total = max(1, int(counts.sum()))
    print(f"{args.data}: {len(pairs)} tiles in {len({p.group for p in pairs})} scene(s), {ds.stats.bands} band(s), "
          f"scheme '{ds.scheme.name}'")
    for name, n in zip(ds.scheme.classes, counts):
        print(f"  {name:<16} {int(n):>12,d} px  {100 * n / total:5.1f} %")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .experiments.demo import run_demo

    cfg = apply_overrides(_profile_cfg(args), args.set)
    run_demo(args.out, args.data, cfg=cfg, ddpm=args.ddpm)
    return 0


def _profile_cfg(args: argparse.Namespace):
    from .config import profile_config

    return profile_config(args.profile)


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from .config import replace
    from .training.pretrain import export_bundle, pretrain

    cfg = apply_overrides(_profile_cfg(args), args.set).ddpm
    changes = {k: v for k, v in {"preset": args.preset, "pool": args.pool and str(args.pool), "steps": args.steps,
                                 "batch_size": args.batch_size, "sample_size": args.sample_size,
                                 "beta_schedule": args.schedule, "lr": args.lr, "seed": args.seed,
                                 "mixed_precision": args.mixed_precision, "log_with": args.log_with}.items()
               if v is not None}
    cfg = replace(cfg, **changes)
    final = pretrain(cfg, args.out, resume=args.resume, stop_after=args.stop_after)
    if final.exists():
        print(f"[pretrain] final bundle (EMA weights): {final}")
        if args.export:
            print(f"[pretrain] exported to {export_bundle(args.out, args.export, half=args.export_half, command=_command(args))}")
    else:
        print(f"[pretrain] stopped; continue with --resume latest --out {args.out}")
    return 0


def _cmd_push_bundle(args: argparse.Namespace) -> int:
    from .ddpm.unet import push_bundle

    print(f"[push-bundle] {args.bundle} → {args.repo_id}: {push_bundle(args.bundle, args.repo_id, private=args.private)}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .experiments.bench import run
    from .config import check_profile, default_profile

    run(args.what, check_profile(args.profile or default_profile()), args.json)
    return 0


def apply_overrides(cfg, pairs: list[str]):
    """``section.field=value`` overrides (``model.fusion=add``, ``features.timesteps=50,150``)."""
    import dataclasses

    from .config import replace

    for item in pairs or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--set {item!r}: use section.field=value, e.g. model.fusion=add")
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        if not hasattr(cfg, section) or not dataclasses.is_dataclass(getattr(cfg, section)):
            sections = [f.name for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(getattr(cfg, f.name))]
            raise ConfigError(f"--set {item!r}: no section '{section}'; sections: {', '.join(sections)}")
        sec = getattr(cfg, section)
        fields = {f.name: f for f in dataclasses.fields(sec)}
        if name not in fields:
            raise ConfigError(f"--set {item!r}: {section} has no field '{name}'; fields: {', '.join(fields)}")
        current = getattr(sec, name)
        hint = str(fields[name].type)
        if isinstance(current, bool):
            parsed = value.lower() in ("1", "true", "yes")
        elif isinstance(current, tuple) or "tuple" in hint:
            parsed = tuple(int(v) if v.strip().lstrip("-").isdigit() else v.strip() for v in value.split(",") if v.strip())
        elif isinstance(current, int) and not isinstance(current, bool):
            parsed = int(value)
        elif isinstance(current, float):
            parsed = float(value)
        elif current is None and value.replace(".", "", 1).isdigit():
            parsed = float(value) if "." in value else int(value)
        else:
            parsed = value
        setattr(cfg, section, replace(sec, **{name: parsed}))
    return cfg


def _cmd_finetune(args: argparse.Namespace) -> int:
    from .config import replace
    from .training.finetune import finetune

    cfg = apply_overrides(_profile_cfg(args), args.set)
    changes = {k: v for k, v in {"method": args.method, "variant": args.variant, "stages": args.stages,
                                 "fusion": args.fusion}.items() if v is not None}
    cfg.model = replace(cfg.model, **changes)
    if args.log_with is not None:
        cfg.train = replace(cfg.train, log_with=args.log_with)
    if args.data:
        cfg.data = replace(cfg.data, root=str(args.data), scheme=args.scheme or cfg.data.scheme)
    if args.dataset is not None:
        cfg.data = replace(cfg.data, dataset=args.dataset)
    if args.ddpm:
        cfg.features = replace(cfg.features, checkpoint=str(args.ddpm))
    s = finetune(cfg, args.out, resume=args.resume, stop_after=args.stop_after)
    print(f"[finetune] {s['method']}: best validation mIoU {100 * max(s['best_miou'], 0):.1f} % at step "
          f"{s['best_step']} (validation scenes {', '.join(s['val_groups'])}); checkpoints in {args.out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .inference.evaluate import evaluate

    r = evaluate(args.checkpoint, args.data, args.out, window=args.window, ddpm_path=args.ddpm)
    if r["labelled_tiles"]:
        print(f"{r['labelled_tiles']} labelled tile(s): mIoU {100 * r['miou']:.1f} %, mF1 {100 * r['mf1']:.1f} %, "
              f"OA {100 * r['oa']:.1f} %")
        for c, v in r["iou"].items():
            print(f"  {c:<16} IoU {100 * v:5.1f} %")
        print(f"metrics: {Path(args.out) / 'metrics.json'}")
    else:
        print(f"no masks in {args.data}: wrote predictions only ({r['tiles']} tile(s)); no metrics computed")
    print(f"predictions (GeoTIFF + PNG): {r['predictions']}")
    return 0


def _cmd_features(args: argparse.Namespace) -> int:
    from .config import replace
    from .features.archive import extract_archive

    cfg = apply_overrides(_profile_cfg(args), args.set)
    fc = replace(cfg.features, checkpoint=str(args.ddpm)) if args.ddpm else cfg.features
    m = extract_archive(args.data, args.cache, fc)
    print(f"[features] {m['tiles']} tile(s) by {m['processes']} process(es) → {m['cache']}")
    return 0


def _cmd_label_efficiency(args: argparse.Namespace) -> int:
    from .config import dubai_dir, replace
    from .experiments.label_efficiency import label_efficiency

    data = args.data or dubai_dir()
    if data is None:
        raise ConfigError("no data: pass --data DIR (images/ + labels/ per scene), set DHL_DUBAI_DIR, or restore the "
                          "embedded data_samples/dubai_aerial")
    cfg = _profile_cfg(args)
    cfg.data = replace(cfg.data, scheme=args.scheme)
    cfg = apply_overrides(cfg, args.set)
    label_efficiency(data, args.out, cfg, ddpm=args.ddpm, command=_command(args))
    print(f"[label-efficiency] table: {Path(args.out) / 'table.md'}; plot: {Path(args.out) / 'label_efficiency.png'}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .config import check_profile, default_profile, profile_folder
    from .experiments.sweep import ABLATIONS, aggregate, markdown_table, run_experiment, run_sweep

    profile = check_profile(args.profile or default_profile())
    results = args.results or profile_folder("results", profile)
    runs = profile_folder("runs/sweep", profile)
    configs: dict = {}
    for name in args.ablation:
        if name not in ABLATIONS:
            raise ConfigError(f"unknown ablation '{name}'; choose from {', '.join(ABLATIONS)}")
        configs.update(ABLATIONS[name])
    if args.engine == "papermill":
        run_sweep(configs, profile, notebook=args.notebook, results_dir=results, executed_dir=runs / "notebooks",
                  runs_dir=runs)
    else:
        for run, params in configs.items():
            print(f"[sweep] {run}: {params}")
            run_experiment(run, profile, results_dir=results, runs_dir=runs, progress=True, **params)
    print(markdown_table(aggregate(results, runs=configs)))
    return 0


_DATASET_HELP = ("isprs_potsdam, isprs_vaihingen, loveda, landcover_ai or dubai, as released or converted by "
                 "mmsegmentation; empty: a generic images/ + masks/ folder")


_LOG_WITH_HELP = "tensorboard, wandb or mlflow (when installed): log to that dashboard too; files in <out>/logs"


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
    s.add_argument("--dataset", default="", help=_DATASET_HELP)
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
    s.add_argument("--log-with", default=None, help=_LOG_WITH_HELP)
    s.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                   help="any config field, repeatable, e.g. ddpm.num_workers=4 (the options above win)")
    s.set_defaults(func=_cmd_pretrain)

    s = sub.add_parser("push-bundle", help="upload a DDPM bundle to the Hugging Face Hub (then --ddpm user/repo "
                       "anywhere, or diffusers' DDPMPipeline.from_pretrained)")
    s.add_argument("bundle", type=Path)
    s.add_argument("repo_id", help="user/repo; created if needed (log in first: huggingface-cli login)")
    s.add_argument("--private", action="store_true")
    s.set_defaults(func=_cmd_push_bundle)

    s = sub.add_parser("finetune", help="fine-tune HRNet / Diff-HRNet / the DDPM pixel classifier")
    s.add_argument("--profile", default=None)
    s.add_argument("--out", type=Path, default=Path("runs/finetune"))
    s.add_argument("--method", default=None, help="hrnet, diffhrnet or ddpm_mlp")
    s.add_argument("--variant", default=None, help="w18_small, w18, w32, w48")
    s.add_argument("--stages", default=None, help="none, late, multistage or stage numbers, e.g. '2 4'")
    s.add_argument("--fusion", default=None, help="concat, add or gated")
    s.add_argument("--data", type=Path, default=None, help="labelled folder (images/ + masks/)")
    s.add_argument("--scheme", default=None)
    s.add_argument("--dataset", default=None, help=_DATASET_HELP + "; its official train/val split is used "
                   "unless data.val_groups is set")
    s.add_argument("--ddpm", type=Path, default=None, help="DDPM bundle (default: the embedded tiny one)")
    s.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="any config field, repeatable")
    s.add_argument("--resume", default=None)
    s.add_argument("--stop-after", type=int, default=None)
    s.add_argument("--log-with", default=None, help=_LOG_WITH_HELP)
    s.set_defaults(func=_cmd_finetune)

    s = sub.add_parser("evaluate", help="predict whole tiles; metrics when masks are present")
    s.add_argument("--checkpoint", type=Path, required=True)
    s.add_argument("--data", type=Path, required=True)
    s.add_argument("--out", type=Path, default=Path("runs/evaluate"))
    s.add_argument("--window", type=int, default=None)
    s.add_argument("--ddpm", type=Path, default=None, help="override the DDPM bundle recorded in the checkpoint")
    s.set_defaults(func=_cmd_evaluate)

    s = sub.add_parser("sweep", help="run ablations (one fine-tuning per configuration) and tabulate them")
    s.add_argument("ablation", nargs="+", help="stages, fusion, timesteps, blocks, budget, ddpm")
    s.add_argument("--profile", default=None)
    s.add_argument("--engine", choices=["python", "papermill"], default="python",
                   help="python: in this process; papermill: notebooks/experiment.ipynb once per run")
    s.add_argument("--notebook", type=Path, default=Path("notebooks/experiment.ipynb"))
    s.add_argument("--results", type=Path, default=None,
                   help="folder of results/<run>.json (default: results, or results_<profile> for a profile other "
                        "than quick; checkpoints likewise in runs/sweep[_<profile>])")
    s.set_defaults(func=_cmd_sweep)

    s = sub.add_parser("features", help="whole-tile DDPM features of an archive into the feature cache "
                       "(shards across processes under `accelerate launch`)")
    s.add_argument("--data", type=Path, required=True, help="folder of tiles, or a dataset with images/")
    s.add_argument("--cache", type=Path, required=True, help="the cache folder (features.cache_dir when fine-tuning)")
    s.add_argument("--ddpm", type=Path, default=None, help="DDPM bundle (default: the embedded tiny one)")
    s.add_argument("--profile", default=None)
    s.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="e.g. features.timesteps=50,150")
    s.set_defaults(func=_cmd_features)

    s = sub.add_parser("label-efficiency", help="few-label comparison on real scenes (DDPM on all images, "
                       "1/2 labelled scenes, one scene or each in turn held out, several seeds, paired bootstrap)")
    s.add_argument("--data", type=Path, default=None,
                   help="labelled dataset with scene sub-folders (default: $DHL_DUBAI_DIR, else the embedded Dubai scenes)")
    s.add_argument("--scheme", default="dubai")
    s.add_argument("--profile", default=None, help="smoke, quick (the 4-fold rotation: about 80 min on a 2-core CPU, see BENCHMARKS.md), colab or full (GPU)")
    s.add_argument("--out", type=Path, default=Path("runs/label_efficiency"))
    s.add_argument("--ddpm", type=Path, default=None, help="use this DDPM bundle instead of pretraining one")
    s.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                   help="any config field, e.g. label_efficiency.held_out=all (every scene in turn), "
                        "label_efficiency.seeds=0,1 or label_efficiency.held_out=Tile_2")
    s.set_defaults(func=_cmd_label_efficiency)

    s = sub.add_parser("bench", help="benchmarks that print figures and ratios")
    s.add_argument("what", choices=["all", "features", "hrnet", "diffhrnet", "demo", "pipeline"],
                   help="all: every benchmark (demo in the quick profile) into results/bench.json")
    s.add_argument("--profile", default=None)
    s.add_argument("--json", action="store_true", help="one JSON line")
    s.set_defaults(func=_cmd_bench)

    s = sub.add_parser("demo", help="the main job: HRNet, DDPM pixel classifier and Diff-HRNet trained on one "
                       "labelled Dubai scene, scored on another")
    s.add_argument("--out", type=Path, default=Path("runs/demo"))
    s.add_argument("--data", type=Path, default=None,
                   help="Dubai-layout folder (images/Tile_N, labels/Tile_N) or a samples folder holding dubai_aerial/ "
                        "(default: the embedded data_samples/dubai_aerial)")
    s.add_argument("--ddpm", type=Path, default=None, help="DDPM bundle (default: the embedded data_samples/ddpm_dubai)")
    s.add_argument("--profile", default=None, help="smoke, quick (default) or full")
    s.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                   help="any config field, e.g. demo.test_scene=Tile_4 or demo.train_steps=200")
    s.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    try:
        return int(args.func(args) or 0)
    except (DataError, ConfigError) as exc:
        print(f"diffhrnet-lab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        _end_distributed()


def _end_distributed() -> None:
    """Under ``accelerate launch`` close the process group before exiting: gloo aborts a process
    that exits with it still open ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
