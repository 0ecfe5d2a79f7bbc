"""``make demo``: the few-label comparison on real imagery (the embedded Dubai scenes).

The question the kit is about: with labels for a single scene, do DDPM features pretrained on
unlabelled imagery help a segmenter?  The demo answers it once, small enough for a laptop CPU:

1. disjoint scenes of the embedded Dubai aerial data (``DemoConfig``): every method trains on the
   labels of ``train_scene`` only and its last step is scored once on ``test_scene``, which none of
   them trained on: the label-efficiency rotation's protocol (same steps, no selection) for one
   held-out scene, one training scene and one seed.  A ``select_scene`` adds a third scene to pick
   each method's best step on;
2. the methods are the ``experiments.methods`` names ``hrnet`` (no DDPM), ``ddpm_mlp`` (DDPM
   features alone, DDPM-Seg's pixel classifier) and ``diffhrnet`` (the two fused), same data, seed
   and schedule; the DDPM is the embedded ``ddpm_dubai`` bundle, pretrained on the images of all four
   scenes without their labels, and its features are computed once per tile (the feature cache);
3. ``report.md``: test-scene mIoU / mF1 / OA, per-class IoU, predictions beside the labels, the
   training curves and, when the repository has it, the rotation plot of the label-efficiency
   experiment (every scene held out in turn, with intervals: one demo run is one draw of noise).

Each run resumes from its checkpoints, so an interrupted demo continues where it stopped; the same
seed gives identical metrics.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from ..config import PACKAGE_ROOT, ProfileConfig, embedded_dubai_ddpm_dir, embedded_dubai_dir, profile_config, replace
from ..data.datasets import find_pairs, first_per_group, groups_of
from ..data.io import read_mask, read_tile
from ..data.labels import DUBAI
from ..errors import DataError
from ..explore.viz import plot_curves, plot_iou_bars, plot_miou, plot_predictions, plot_tiles_and_masks, save_figure
from ..fileio import atomic_write_json, atomic_write_text, check_writable, markdown_table
from ..inference.metrics import Scores, pct
from .methods import check_methods, label, method_model

ROTATION_FIGURE = PACKAGE_ROOT.parent / "benchmarks" / "label_efficiency_rotation.png"  # made by the rotation run
MAX_PANELS = 3  # test tiles drawn beside their labels (a figure row each)


def demo_data(data_dir: str | Path | None) -> Path:
    """The Dubai-layout folder the demo reads: ``data_dir`` itself, or its ``dubai_aerial/`` when
    ``data_dir`` is a samples folder; by default the embedded copy."""
    data = Path(data_dir) if data_dir else embedded_dubai_dir()
    if not (data / "images").is_dir() and (data / "dubai_aerial" / "images").is_dir():
        data = data / "dubai_aerial"
    if not (data / "images").is_dir():
        raise DataError(f"{data}: no images/ folder; the demo needs the Dubai layout (images/Tile_N/*.jpg, "
                        f"labels/Tile_N/*.png), embedded at {embedded_dubai_dir()}")
    return data


def demo_scenes(d) -> dict[str, str]:
    """Role → scene of a :class:`~diffhrnet_lab.config.DemoConfig`: train, [select,] test."""
    return {"train": d.train_scene, **({"select": d.select_scene} if d.select_scene else {}), "test": d.test_scene}


def demo_configs(cfg: ProfileConfig, data: Path, ddpm: Path, cache_dir: Path) -> dict[str, ProfileConfig]:
    """One fine-tuning config per demo method: the same data, seed and schedule; only the model
    differs.  Each validates on ``select_scene`` every ``eval_every`` steps when one is named;
    otherwise once, at the last step, on ``test_scene``: that single validation is the test score
    (nothing is picked on it), which saves scoring the test scene twice."""
    d = cfg.demo
    check_methods(d.methods)
    scenes = demo_scenes(d)
    if len(set(scenes.values())) != len(scenes):
        raise DataError("demo scenes must be different scenes; got "
                        + ", ".join(f"{role} {scene}" for role, scene in scenes.items()))
    have = groups_of(find_pairs(data))
    missing = [s for s in scenes.values() if s not in have]
    if missing:
        raise DataError(f"{data}: demo scene(s) {missing} not found; scenes are {have}")
    steps = d.train_steps or cfg.train.steps
    every = min(d.eval_every or cfg.train.eval_every, steps) if d.select_scene else steps
    base = dataclasses.replace(
        cfg,
        data=replace(cfg.data, root=str(data), scheme=DUBAI.name, val_groups=(d.select_scene or d.test_scene,),
                     train_groups=(d.train_scene,), label_budget=None, max_per_group=d.max_per_group),
        features=replace(cfg.features, checkpoint=str(ddpm), cache=True, cache_dir=str(cache_dir)),
        train=replace(cfg.train, steps=steps, eval_every=every, checkpoint_every=min(cfg.train.checkpoint_every, steps)),
    )
    return {m: dataclasses.replace(base, model=method_model(cfg.model, m)) for m in d.methods}


def run_demo(out_dir: str | Path = "runs/demo", data_dir: str | Path | None = None, profile: str | None = None,
             progress: bool = True, cfg: ProfileConfig | None = None, ddpm: str | Path | None = None) -> Path:
    """Run the demo into ``out_dir``; return the path of ``report.md``."""
    t_start = time.time()
    out = check_writable(out_dir)
    cfg = cfg or profile_config(profile)
    data = demo_data(data_dir)
    bundle = Path(ddpm) if ddpm else embedded_dubai_ddpm_dir()
    if not (bundle / "ddpm.json").exists():
        raise DataError(f"{bundle}: no DDPM bundle (ddpm.json); make it with `diffhrnet-lab pretrain --profile quick "
                        f"--pool {embedded_dubai_dir() / 'images'} --out runs/ddpm_dubai --export {bundle} --export-half` "
                        "(the embedded one ran longer on a GPU: data_samples/ddpm_dubai/README.md)")
    configs = demo_configs(cfg, data, bundle, out / "feature_cache")
    d = cfg.demo
    scenes = demo_scenes(d)
    val_scene = scenes.get("select", d.test_scene)
    pairs = first_per_group(find_pairs(data), d.max_per_group)
    shown = [next(p for p in pairs if p.group == s) for s in scenes.values()]
    save_figure(plot_tiles_and_masks([read_tile(p.image).image for p in shown], [read_mask(p.mask, DUBAI) for p in shown],
                                     DUBAI, titles=[f"{p.id} ({role})" for p, role in zip(shown, scenes)],
                                     cols=len(shown)), out / "samples.png")

    from ..training.finetune import finetune

    summaries = {}
    for key, c in configs.items():
        print(f"[demo] fine-tuning {label(key)} on {d.train_scene} ({cfg.name} profile) → {out / key}")
        summaries[key] = finetune(c, out / key, resume="latest", progress=progress)
        if summaries[key]["train_groups"] != [d.train_scene] or summaries[key]["val_groups"] != [val_scene]:
            raise DataError(f"{out / key}: trained on {summaries[key]['train_groups']}, validated on "
                            f"{summaries[key]['val_groups']}; expected {d.train_scene} / {val_scene} "
                            "(delete the folder: it is from another demo configuration)")

    test_pairs = [p for p in pairs if p.group == d.test_scene]
    preds, scores_by = _score_on_test(out, configs, summaries, test_pairs, bool(d.select_scene))
    names = {k: label(k) for k in configs}
    test_images = [read_tile(p.image).image for p in test_pairs[:MAX_PANELS]]
    test_masks = [read_mask(p.mask, DUBAI) for p in test_pairs[:MAX_PANELS]]
    save_figure(plot_predictions(test_images, test_masks, {names[k]: v[:MAX_PANELS] for k, v in preds.items()}, DUBAI,
                                 titles=[p.id for p in test_pairs[:MAX_PANELS]]), out / "predictions.png")
    save_figure(plot_iou_bars({names[k]: dict(zip(s.classes, s.iou)) for k, s in scores_by.items()},
                              title=f"per-class IoU on {d.test_scene}"), out / "iou.png")
    save_figure(plot_miou({names[k]: s.miou for k, s in scores_by.items()}, title=f"test mIoU ({d.test_scene})"),
                out / "miou.png")
    save_figure(plot_curves({names[k]: s["history"] for k, s in summaries.items()}), out / "curves.png")
    rotation = None
    if ROTATION_FIGURE.exists():
        rotation = shutil.copyfile(ROTATION_FIGURE, out / ROTATION_FIGURE.name)
    result = {names[k]: s.as_dict() for k, s in scores_by.items()}
    result.update(profile=cfg.name, scenes=scenes, val_groups=[val_scene], test_tiles=[p.id for p in test_pairs],
                  ddpm=str(bundle), best_step={names[k]: s["best_step"] for k, s in summaries.items()},
                  wall_s=round(time.time() - t_start, 1))
    if d.select_scene:
        result["select_miou"] = {names[k]: s["best_miou"] for k, s in summaries.items()}
    atomic_write_json(out / "results.json", result)
    atomic_write_text(out / "report.md", _report(cfg, configs, summaries, scores_by, pairs, test_pairs, bundle,
                                                 rotation, result["wall_s"]))
    print("[demo] " + "  ".join(f"{names[k]}: test mIoU {100 * s.miou:.1f} %" for k, s in scores_by.items()))
    print(f"[demo] report: {out / 'report.md'} ({result['wall_s']:.0f} s)")
    return out / "report.md"


def _score_on_test(out: Path, configs: dict[str, ProfileConfig], summaries: dict, test_pairs,
                   selected: bool) -> tuple[dict, dict]:
    """Each method's test-scene scores and its predictions for the figure.  With a selection scene,
    the selected (best) checkpoint is scored once on the whole test scene.  Without one, the run's
    single validation, at its last step on the test scene, already is that score, and only the
    first ``MAX_PANELS`` tiles are predicted again for the figure."""
    from ..inference.evaluate import score_checkpoint

    preds, scores_by = {}, {}
    shown = test_pairs if selected else test_pairs[:MAX_PANELS]
    for key, c in configs.items():
        _, preds[key], scored = score_checkpoint(out / key / "best", shown, c.features, c.train.eval_window)
        scores_by[key] = scored if selected else Scores.from_dict(summaries[key]["best_scores"])
    return preds, scores_by


def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it: reports should not name one machine's folders."""
    try:
        return str(Path(path).resolve().relative_to(PACKAGE_ROOT.parent))
    except ValueError:
        return str(path)


def _report(cfg: ProfileConfig, configs, summaries, scores_by, pairs, test_pairs, bundle: Path, rotation,
            wall_s: float) -> str:
    d, c0 = cfg.demo, next(iter(configs.values()))
    keys = list(scores_by)
    names = [label(k) for k in keys]
    n_of = {s: sum(p.group == s for p in pairs) for s in demo_scenes(d).values()}
    meta = json.loads((bundle / "ddpm.json").read_text())
    if d.select_scene:
        how = [f"- **best step selected** on **{d.select_scene}** ({n_of[d.select_scene]} image(s)), "
               f"evaluated every {c0.train.eval_every} of {c0.train.steps} steps;",
               f"- **scored** once on **{d.test_scene}** ({n_of[d.test_scene]} image(s)), which no method trained or "
               "selected on; whole tiles, sliding window."]
        head, cells = [f"mIoU % on {d.select_scene} (selection)"], lambda k: [f"{100 * summaries[k]['best_miou']:.1f}"]
    else:
        how = [f"- **scored** at the last of {c0.train.steps} steps, once, on **{d.test_scene}** ({n_of[d.test_scene]} "
               "image(s)), which no method trained on; whole tiles, sliding window. Nothing is selected on it: "
               "the protocol of the label-efficiency rotation below (same steps, no selection scene), for one held-out "
               "scene, one training scene and one seed."]
        head, cells = [], lambda k: []
    lines = [
        "# diffhrnet_lab demo: few labels on real imagery", "",
        f"Profile **{cfg.name}**, wall time **{wall_s:.0f} s** (this run, including feature extraction and scoring).", "",
        "Data: the embedded Dubai aerial scenes (Humans in the Loop, MBRSC; CC0), 5 classes, Unlabeled ignored.", "",
        f"- **trained on** the labels of one scene: **{d.train_scene}** ({n_of[d.train_scene]} image(s));",
        *how, "",
        f"Every method: same scenes, seed {c0.train.seed}, {c0.data.crop_size}² crops, batch {c0.data.batch_size}, "
        f"lr {c0.train.lr}. DDPM: `{_shown(bundle)}` ({meta.get('preset', '?')} U-Net, {meta.get('step', '?')} steps on the "
        f"images of all scenes, labels unused), features at t = {list(c0.features.timesteps)}, decoder blocks "
        f"{list(c0.features.blocks)}, computed once per tile (feature cache).", "",
        "## Test scene", "",
        markdown_table(["method", "mIoU %", "mF1 %", "OA %", "step scored", *head],
                       [[n, f"{100 * scores_by[k].miou:.1f}", f"{100 * scores_by[k].mf1:.1f}",
                         f"{100 * scores_by[k].oa:.1f}", summaries[k]["best_step"], *cells(k)]
                        for k, n in zip(keys, names)]),
        "", "One scene, one seed: a single draw.  Differences of a few points between methods are within the "
        "seed-to-seed and scene-to-scene spread; the label-efficiency rotation below (every scene held out in "
        "turn, several seeds, paired bootstrap intervals) is the measurement to trust.", "",
        "![test mIoU](miou.png)", "", f"## Per-class IoU on {d.test_scene}", "",
        markdown_table(["class", *names], [[cl, *(pct(scores_by[k].iou[i]) for k in keys)]
                                           for i, cl in enumerate(scores_by[keys[0]].classes)]),
        "", "![per-class IoU](iou.png)", "", f"## Predictions beside the labels ({d.test_scene})", "",
        f"First {min(MAX_PANELS, len(test_pairs))} of the {len(test_pairs)} test images.", "",
        "![predictions](predictions.png)", "",
        f"## Training (loss; validation mIoU on {d.select_scene or d.test_scene})", "", "![curves](curves.png)", "",
        "## The scenes", "", "![first image of each scene with its labels](samples.png)", "",
        "## Label efficiency over every scene", "",
    ]
    if rotation is not None:
        lines += ["From `BENCHMARKS.md` (the rotation: each scene held out in turn, several seeds; bars are paired "
                  "bootstrap 95 % intervals):", "", f"![label-efficiency rotation]({Path(rotation).name})", ""]
        rows = ROTATION_FIGURE.with_suffix(".json")
        if rows.exists():
            from .label_efficiency import markdown

            lines += [markdown(json.loads(rows.read_text())["summary"]), ""]
    else:
        lines += ["Not in this checkout yet: run `diffhrnet-lab label-efficiency --profile quick --set "
                  "label_efficiency.held_out=all` and keep its plot as `benchmarks/label_efficiency_rotation.png`.", ""]
    if cfg.name == "smoke":
        lines.insert(2, "> Smoke profile: a few steps on one image per scene; the numbers show the pipeline runs, "
                        "not what the methods do.\n")
    return "\n".join(lines)
