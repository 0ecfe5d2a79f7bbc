"""Label efficiency on real imagery: does the DDPM help when labels are scarce?

The paper's claim (Wu et al., GRSL 2024, §I and §III) is that a DDPM pretrained on *unlabelled*
imagery gives HRNet features that make up for missing labels.  This experiment measures it the way
the few-label literature does (DDPM-Seg, Baranchuk et al. 2022, §4):

1. pretrain the DDPM on every image of the dataset as an unlabelled pool (labels unused), once:
   the same bundle serves every fold, since it never sees a label;
2. hold a scene out for scoring, never trained on; ``held_out="all"`` rotates through every scene
   (one fold each), because with four scenes a single held-out scene is mostly a measure of that
   scene;
3. fine-tune each method on 1, 2 labelled scenes (nested: the 2-scene set contains the 1-scene set
   for a seed), for several seeds (the seed picks the scenes, the crops and the initialisation).
   The scenes depend only on (fold, budget, seed), never on the method, so every method of a
   (fold, budget, seed) trains on the same scenes: the runs are *paired*;
4. score every run on the whole held-out scene once, at the end of training: with so few labels
   there is no separate validation set to pick a "best" step on, and picking it on the held-out
   scene would flatter every method;
5. summarise per method and budget: mean mIoU, per-class IoU, and the mean *paired* gain over
   HRNet-only and over the DDPM pixel classifier with a paired bootstrap interval (resampling the
   (fold, seed) pairs): pairing removes the scene-to-scene variance that dwarfs the method effect.

Methods come from ``experiments.methods`` (default ``hrnet``, ``ddpm_mlp``, ``diffhrnet``).  DDPM
methods use the feature cache (each tile's features computed once and shared by all runs and
folds), so the comparison costs little more than HRNet alone.  Finished runs are skipped on a re-run
and unfinished ones resume: the experiment survives a crash.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..config import MODEL_FIELDS_BEFORE, SCORING_ONLY, ModelConfig, ProfileConfig, profile_config, replace
from ..data.datasets import find_pairs, first_per_group, groups_of
from ..errors import ConfigError, DataError
from ..fileio import atomic_write_csv, atomic_write_json, atomic_write_text, check_writable, markdown_table
from .methods import BASES, TEACHERS, check_methods, check_teachers, label, method_model

BASELINES = ("hrnet", "ddpm_mlp")  # the gains reported: over HRNet alone, and over the DDPM features alone


def folds(cfg: ProfileConfig, root: Path) -> list[str]:
    """The held-out scene of each fold: every scene for ``held_out="all"``, else the one named.
    Checks methods and budgets first, so a bad setting fails before any training."""
    le = cfg.label_efficiency
    check_methods(le.methods)
    check_teachers(le.methods)
    groups = groups_of(first_per_group(find_pairs(root), cfg.data.max_per_group))
    if len(groups) < 2:
        raise DataError(f"{root}: {len(groups)} scene(s); holding one out needs at least 2")
    if le.held_out != "all" and le.held_out not in groups:
        raise DataError(f"{root}: held-out scene '{le.held_out}' not found; scenes are {groups} (or 'all')")
    too_many = [b for b in le.budgets if not 1 <= b <= len(groups) - 1]
    if too_many:
        raise DataError(f"{root}: label budget(s) {too_many} impossible with {len(groups) - 1} training scene(s)")
    if not le.seeds:
        raise DataError("label_efficiency.seeds is empty")
    return list(groups) if le.held_out == "all" else [le.held_out]


def pretrain_pool_ddpm(cfg: ProfileConfig, root: Path, out: Path, progress: bool = True) -> Path:
    """Step 1: the DDPM on every image of ``root/images`` (all scenes, labels unused); resumable."""
    from ..training.pretrain import pretrain

    final = out / "ddpm" / "final"
    steps = cfg.label_efficiency.ddpm_steps or cfg.ddpm.steps
    if (final / "ddpm.json").exists():
        done = json.loads((final / "ddpm.json").read_text())
        if done.get("step") != steps or done.get("preset") != cfg.ddpm.preset:
            raise ConfigError(f"{final}: this DDPM was pretrained for {done.get('step')} steps ({done.get('preset')} "
                              f"U-Net), this experiment asks for {steps} ({cfg.ddpm.preset}); pick another --out, "
                              "or pass the bundle with --ddpm to use it as it is")
        return final
    dcfg = replace(cfg.ddpm, pool=str(root / "images"), steps=steps,
                   sample_every=min(cfg.ddpm.sample_every, steps), checkpoint_every=min(cfg.ddpm.checkpoint_every, steps))
    print(f"[label-efficiency] pretraining the DDPM ({dcfg.preset}, {steps} steps) on {root / 'images'}")
    return pretrain(dcfg, out / "ddpm", resume="latest", progress=progress)


def run_config(cfg: ProfileConfig, root: Path, ddpm: Path, cache_dir: Path, method: str, budget: int,
               seed: int, held_out: str | None = None, out: Path | None = None) -> ProfileConfig:
    """The fine-tuning settings of one (method, fold, budget, seed) run.  ``held_out``: the fold's
    scene (default ``label_efficiency.held_out``).  The data settings do not depend on ``method``, so
    the methods of a (fold, budget, seed) train on the same scenes.  ``cache_dir`` is where tile
    features go unless ``features.cache_dir`` names another (a second experiment reusing them).
    A self-trained method (``methods.TEACHERS``) is taught by its teacher's run of the same
    (fold, budget, seed) under ``out``; a method on a frozen base (``methods.BASES``) starts from
    that base's run there."""
    le = cfg.label_efficiency
    held_out = held_out or le.held_out
    if held_out == "all":
        raise DataError("run_config needs one held-out scene, not 'all' (see folds())")
    steps = le.train_steps or cfg.train.steps
    teacher, pseudo = "", {}
    if method in TEACHERS:
        if out is None:
            raise ConfigError(f"method '{method}' needs the experiment's folder to find its teacher's run")
        teacher, pseudo = str(run_dir(out, held_out, TEACHERS[method][0], budget, seed)), TEACHERS[method][1]
    model = method_model(cfg.model, method)
    if method in BASES:
        if out is None:
            raise ConfigError(f"method '{method}' needs the experiment's folder to find its base's run")
        model = replace(model, base_init=str(run_dir(out, held_out, BASES[method], budget, seed)))
    return dataclasses.replace(
        cfg,
        data=replace(cfg.data, root=str(root), val_groups=(held_out,), train_groups=None, label_budget=budget,
                     seed=seed),
        model=model,
        features=replace(cfg.features, checkpoint=str(ddpm), cache=True, cache_dir=cfg.features.cache_dir or str(cache_dir)),
        train=replace(cfg.train, steps=steps, seed=seed, eval_every=steps,
                      checkpoint_every=min(cfg.train.checkpoint_every, steps), teacher=teacher, **pseudo),
    )


def run_dir(out: Path, held_out: str, method: str, budget: int, seed: int) -> Path:
    """One run's folder: ``runs/<held-out scene>/<method>_b<budget>_s<seed>``; a single-scene
    experiment and a rotation in the same ``out`` share the runs of their common fold."""
    return out / "runs" / held_out / f"{method}_b{budget}_s{seed}"


def label_efficiency(data: str | os.PathLike, out_dir: str | os.PathLike, cfg: ProfileConfig | None = None,
                     ddpm: str | os.PathLike | None = None, progress: bool = True,
                     command: str | None = None) -> dict[str, Any]:
    """Run the whole experiment into ``out_dir``; return (and write) the result.

    Writes ``runs/<held-out>/<method>_b<budget>_s<seed>/`` (each a fine-tuning run), ``results.csv``
    (one row per run), ``label_efficiency.json`` (command, settings, ``rows``, ``summary``),
    ``table.md`` and ``label_efficiency.png``.  ``ddpm``: use this bundle instead of pretraining one.
    """
    from ..training.finetune import finetune

    cfg = cfg or profile_config()
    root = Path(data)
    out = check_writable(out_dir)
    held_outs = folds(cfg, root)
    le = cfg.label_efficiency
    bundle = Path(ddpm) if ddpm else pretrain_pool_ddpm(cfg, root, out, progress)
    digest = ddpm_digest(bundle)
    rows, classes = [], None
    for held_out in held_outs:
        for budget in le.budgets:
            for seed in le.seeds:
                for method in le.methods:
                    run = run_dir(out, held_out, method, budget, seed)
                    if (run / "summary.json").exists():
                        rc = run_config(cfg, root, bundle, out / "feature_cache", method, budget, seed, held_out, out)
                        want = rc.model  # a frozen base's run included (methods.BASES)
                        check_same_model(run, want, method)
                        check_same_ddpm(run, digest, bundle)
                        summary = json.loads((run / "summary.json").read_text())
                        check_same_training(run, summary, rc)
                        summary = rescored(run, summary, want, rc)
                    else:
                        print(f"[label-efficiency] {method}, held out {held_out}, {budget} labelled scene(s), seed {seed}")
                        summary = finetune(run_config(cfg, root, bundle, out / "feature_cache", method, budget, seed,
                                                      held_out, out), run, resume="latest", progress=progress)
                        drop_resume_state(run)
                    row = run_row(summary, method, held_out, budget, seed)
                    classes = classes or list(row["iou"])
                    rows.append(row)
    check_paired(rows, le.methods)
    summary_table = summarise(rows, le.bootstrap_resamples, le.bootstrap_seed, le.confidence)
    result = {"command": command, "profile": cfg.name, "data": str(root), "held_out": le.held_out,
              "folds": held_outs, "ddpm": str(bundle), "train_steps": le.train_steps or cfg.train.steps,
              "settings": {"label_efficiency": dataclasses.asdict(le), "data": dataclasses.asdict(cfg.data),
                           "model": dataclasses.asdict(cfg.model), "features": dataclasses.asdict(cfg.features),
                           "train": dataclasses.asdict(cfg.train),
                           "ddpm_steps": None if ddpm else (le.ddpm_steps or cfg.ddpm.steps)},
              "classes": classes, "rows": rows, "summary": summary_table}
    csv_rows = [{**{k: r[k] for k in ("method", "held_out", "budget", "seed", "miou", "seconds")},
                 "train_groups": " ".join(r["train_groups"]), **{f"iou_{c}": r["iou"][c] for c in classes}}
                for r in rows]
    atomic_write_csv(out / "results.csv", csv_rows, ["method", "held_out", "budget", "seed", "miou", "train_groups",
                                                     "seconds", *(f"iou_{c}" for c in classes)])
    atomic_write_json(out / "label_efficiency.json", result)
    text = markdown(summary_table, le.confidence)
    atomic_write_text(out / "table.md", _table_header(result) + text + "\n")
    from ..explore.viz import save_figure

    save_figure(plot(summary_table, le.confidence), out / "label_efficiency.png")
    print(text)
    return result


def drop_resume_state(run: Path) -> None:
    """Delete a finished run's ``checkpoints/``: they exist to resume an interrupted run, and a run of
    a fixed budget is never extended.  They are three quarters of its disk (two steps of weights and
    Adam moments: 149 MB of a 187 MB Diff-HRNet run in the quick profile, 14 GB of a 96-run
    rotation).  ``best/``, ``last/``, ``history.csv`` and ``summary.json`` stay."""
    shutil.rmtree(run / "checkpoints", ignore_errors=True)


def _run_meta_file(run: Path) -> Path | None:
    """A finished run's ``model.json`` (its ``last/``, else ``best/``); ``None`` without one."""
    return next((run / d / "model.json" for d in ("last", "best") if (run / d / "model.json").is_file()), None)


def _trained_model(run: Path) -> ModelConfig | None:
    """The model a finished run trained, from its ``model.json`` (fields it lacks: what the code did
    before they existed)."""
    meta_file = _run_meta_file(run)
    if meta_file is None:
        return None
    return ModelConfig(**{**MODEL_FIELDS_BEFORE, **json.loads(meta_file.read_text())["model"]})


def rescored(run: Path, summary: dict[str, Any], want: ModelConfig, cfg: ProfileConfig) -> dict[str, Any]:
    """``summary`` of a finished run, its scores taken again when a scoring-only setting
    (:data:`~diffhrnet_lab.config.SCORING_ONLY`, e.g. ``model.correction_scale``) now differs from
    the one it was scored with: its ``last/`` weights on the held-out scene, as training scored them
    (same windows, same cached features).  Training is not repeated, since the setting does not
    change what was learned.  The new scores are kept in ``rescored.json`` beside the summary (which
    stays the record of the training run)."""
    from ..models.segmenters import scoring_settings

    have = _trained_model(run)
    scoring = scoring_settings(want)
    if have is None or scoring_settings(have) == scoring:
        return summary
    cache = run / "rescored.json"
    if cache.is_file():
        kept = json.loads(cache.read_text())
        if kept.get("scoring") == scoring:
            return {**summary, "best_scores": kept["scores"], "rescored": scoring}
    from ..data.layouts import train_val_pairs
    from ..inference.evaluate import score_checkpoint

    print(f"[label-efficiency] {run}: scoring again with {scoring} (scored with {scoring_settings(have)} "
          "when trained; no retraining)")
    _, _, val_pairs = train_val_pairs(cfg.data)
    _, _, sc = score_checkpoint(run / "last", val_pairs, cfg.features, scoring=scoring)
    atomic_write_json(cache, {"scoring": scoring, "scores": sc.as_dict()})
    return {**summary, "best_scores": sc.as_dict(), "rescored": scoring}


def check_same_model(run: Path, want, method: str) -> None:
    """A finished run is reused only if it trained the model ``method`` means now: after a change of
    the default Diff-HRNet, an old ``diffhrnet`` run must not enter the new table under its name.
    Fields a run's ``model.json`` lacks (added later) mean what the code did before them."""
    have = _trained_model(run)
    if have is None:
        return
    keys = {"hrnet": ("method", "variant", "head_dropout", "init_timm"),  # what each segmenter is built from
            "ddpm_mlp": ("method", "finetune_ddpm")}.get(
        want.method, [f.name for f in dataclasses.fields(want) if f.name not in SCORING_ONLY])  # see rescored()
    diff = {k: (getattr(have, k), getattr(want, k)) for k in keys if getattr(have, k) != getattr(want, k)}
    if diff:
        shown = ", ".join(f"{k} {a!r} (now {b!r})" for k, (a, b) in sorted(diff.items()))
        raise ConfigError(f"{run}: this finished run trained another model than method '{method}' means now "
                          f"({shown}); rename or move it (or pick another --out) and run again")


def ddpm_digest(bundle: Path) -> str | None:
    """The sha256 of a local bundle's U-Net weights (what a run's ``model.json`` records); ``None``
    for a bundle named otherwise (a hub id), which the runs then record as they resolved it."""
    from ..ddpm.unet import bundle_weights
    from ..features.extractor import file_hash

    weights = bundle_weights(bundle)
    return file_hash(weights) if weights.is_file() else None


def check_same_ddpm(run: Path, digest: str | None, bundle: Path) -> None:
    """A finished run is reused only if it read this DDPM: the same weights (by hash, so a bundle
    moved or renamed still matches), or rows of two DDPMs would be paired in one table."""
    meta_file = _run_meta_file(run)
    if digest is None or meta_file is None:
        return
    have = (json.loads(meta_file.read_text()).get("ddpm") or {}).get("sha256")
    if have and have != digest:
        raise ConfigError(f"{run}: this finished run read another DDPM (weights sha256 {have[:12]}, {bundle} has "
                          f"{digest[:12]}); rename or move it (or pick another --out) and run again")


def check_same_training(run: Path, summary: dict[str, Any], cfg: ProfileConfig) -> None:
    """A finished run is reused only if it trained with the settings this experiment asks for
    (``training.finetune.RUN_SETTINGS``): a smoke run left in the same ``--out`` must not enter a
    quick profile's table.  Runs from before the settings were kept are compared by their steps."""
    from ..training.finetune import run_settings

    want = run_settings(cfg)
    have = summary.get("settings") or {"train.steps": summary.get("steps")}
    diff = {k: (have[k], want[k]) for k in have if k in want and have[k] != want[k]}
    if diff:
        shown = ", ".join(f"{k} {a!r} (now {b!r})" for k, (a, b) in sorted(diff.items()))
        raise ConfigError(f"{run}: this finished run trained with other settings ({shown}); rename or move it "
                          "(or pick another --out) and run again")


def run_row(summary: dict[str, Any], method: str, held_out: str, budget: int, seed: int) -> dict[str, Any]:
    """One run's row from its ``summary.json``.  The run was evaluated once, at its last step (the
    experiment sets ``eval_every = steps``); a summary with another evaluation step is refused."""
    hist = summary["history"]
    evals = [r["step"] for r in hist if r.get("val_miou") is not None]
    if evals != [summary["steps"]] or not summary.get("best_scores"):
        raise DataError(f"{summary.get('out')}: expected one evaluation at the last step {summary['steps']}, "
                        f"found evaluations at steps {evals}; delete the run to redo it")
    if held_out in summary["train_groups"]:
        raise DataError(f"{summary.get('out')}: trained on the held-out scene {held_out}")
    sc = summary["best_scores"]
    return {"method": method, "held_out": held_out, "budget": budget, "seed": seed, "miou": sc["miou"],
            "iou": dict(sc["iou"]), "train_groups": list(summary["train_groups"]),
            "seconds": hist[-1]["seconds"] if hist else 0.0}


def check_paired(rows: Sequence[dict[str, Any]], methods: Sequence[str]) -> None:
    """Every (fold, budget, seed) has one row per method, all trained on the same scenes; otherwise
    the paired comparison would compare different data (e.g. runs resumed from another dataset)."""
    cells: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        cell = cells.setdefault((r.get("held_out", ""), r["budget"], r["seed"]), {})
        if r["method"] in cell:
            raise DataError(f"two rows for {r['method']} at (held out, budget, seed) = {(r.get('held_out'), r['budget'], r['seed'])}")
        cell[r["method"]] = r
    for key, cell in cells.items():
        missing = sorted(set(methods) - set(cell))
        if missing:
            raise DataError(f"(held out, budget, seed) = {key}: no run of {missing}")
        scenes = {m: tuple(sorted(r["train_groups"])) for m, r in cell.items()}
        if len(set(scenes.values())) > 1:
            raise DataError(f"(held out, budget, seed) = {key}: methods trained on different scenes: {scenes}")


def bootstrap_mean(values: Sequence[float], resamples: int = 10_000, seed: int = 0,
                   confidence: float = 0.95) -> dict[str, float]:
    """Mean of ``values`` with a percentile bootstrap interval: draw ``resamples`` samples of the
    same size with replacement (seeded, so the interval is reproducible) and take the central
    ``confidence`` quantiles of their means.  For paired gains pass the per-pair differences: that is
    the paired bootstrap.  One value gives a zero-width interval (nothing to resample)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("bootstrap of no values")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence} outside (0, 1)")
    idx = np.random.default_rng(seed).integers(0, v.size, size=(resamples, v.size))
    means = v[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return {"mean": float(v.mean()), "lo": float(lo), "hi": float(hi), "n": int(v.size)}


def summarise(rows: Sequence[dict[str, Any]], resamples: int = 10_000, seed: int = 0,
              confidence: float = 0.95, baselines: Sequence[str] = BASELINES) -> list[dict[str, Any]]:
    """Per (method, budget), in mIoU points: the mean over runs with its bootstrap interval, the sample
    std, the mean per-class IoU, and the mean paired gain over each baseline (``gain_vs_<baseline>``)
    with a paired bootstrap interval.  Pairs are the (fold, seed) runs both methods have at that
    budget.  ``baselines`` beyond the two defaults: a baseline variant run beside the rotation (the
    pixel classifier on other DDPM blocks), when the goal is judged against the best of them."""
    table = []
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for method in methods:
        for budget in sorted({r["budget"] for r in rows}):
            mine = {(r.get("held_out", ""), r["seed"]): r for r in rows if r["method"] == method and r["budget"] == budget}
            if not mine:
                continue
            v = [100 * r["miou"] for r in mine.values()]
            entry = {"method": method, "budget": budget, "n": len(v),
                     "miou": bootstrap_mean(v, resamples, seed, confidence),
                     "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
            iou_rows = [r["iou"] for r in mine.values() if r.get("iou")]
            if iou_rows:
                entry["iou"] = {c: _nanmean([100 * i[c] for i in iou_rows]) for c in iou_rows[0]}
            for base in baselines:
                theirs = {(r.get("held_out", ""), r["seed"]): r for r in rows
                          if r["method"] == base and r["budget"] == budget}
                keys = [k for k in mine if k in theirs]
                entry[f"gain_vs_{base}"] = None if method == base or not keys else bootstrap_mean(
                    [100 * (mine[k]["miou"] - theirs[k]["miou"]) for k in keys], resamples, seed, confidence)
            table.append(entry)
    return table


def _nanmean(values: Sequence[float]) -> float | None:
    """Mean over the runs where the class was scored: a class absent from a held-out scene and never
    predicted there has no IoU (NaN), which is not a score of 0."""
    v = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(v)) if np.isfinite(v).any() else None


def _interval(e: dict[str, float] | None, signed: bool = False) -> str:
    if e is None:
        return ""
    f = "{:+.1f}" if signed else "{:.1f}"
    return f"{f.format(e['mean'])} [{f.format(e['lo'])}, {f.format(e['hi'])}]"


def markdown(table: Sequence[dict[str, Any]], confidence: float = 0.95) -> str:
    """Two tables: mean mIoU and paired gains with their intervals, then the mean per-class IoU."""
    ci = f"{round(100 * confidence)} % CI"
    bases = list(dict.fromkeys([*BASELINES, *(k.removeprefix("gain_vs_") for m in table for k in m
                                              if k.startswith("gain_vs_"))]))
    rows = [[m["method"], m["budget"], m["n"], _interval(m["miou"]),
             *(_interval(m.get(f"gain_vs_{b}"), True) for b in bases)] for m in table]
    text = markdown_table(["method", "labelled scenes", "runs", f"mIoU % [{ci}]",
                           *(f"gain vs {label(b)} [{ci}]" for b in bases)], rows)
    classes = next((list(m["iou"]) for m in table if m.get("iou")), None)
    if classes:
        text += "\n\nPer-class IoU % (mean over runs):\n\n" + markdown_table(
            ["method", "labelled scenes", *classes],
            [[m["method"], m["budget"], *("–" if m["iou"][c] is None else f"{m['iou'][c]:.1f}" for c in classes)]
             for m in table if m.get("iou")])
    return text


def _table_header(result: dict[str, Any]) -> str:
    le = result["settings"]["label_efficiency"]
    return (f"Label efficiency ({result['profile']} profile), held out: {', '.join(result['folds'])}; "
            f"budgets {le['budgets']}, seeds {le['seeds']}, {result['train_steps']} fine-tuning steps, scored once "
            f"at the end on the whole held-out scene.  Gains are paired by (fold, seed); intervals: percentile "
            f"bootstrap over those pairs, {le['bootstrap_resamples']} resamples, seed {le['bootstrap_seed']}.\n"
            + (f"\nCommand: `{result['command']}`\n" if result.get("command") else "") + "\n")


def plot(table: Sequence[dict[str, Any]], confidence: float = 0.95):
    """Three panels against labelled scenes: mean mIoU per method, the paired gain over HRNet-only and
    over the DDPM pixel classifier; error bars are the bootstrap intervals (not standard deviations)."""
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in table))
    budgets = sorted({r["budget"] for r in table})
    panels = [("miou", "held-out mIoU %"), ("gain_vs_hrnet", "gain over HRNet (points)"),
              ("gain_vs_ddpm_mlp", "gain over DDPM pixel\nclassifier (points)")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, (key, ylabel) in zip(axes, panels):
        for i, method in enumerate(methods):
            pts = sorted((r["budget"], r[key]) for r in table if r["method"] == method and r.get(key))
            if not pts:
                continue
            x = [b + 0.06 * (i - (len(methods) - 1) / 2) for b, _ in pts]
            y = [e["mean"] for _, e in pts]
            err = [[e["mean"] - e["lo"] for _, e in pts], [e["hi"] - e["mean"] for _, e in pts]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=f"C{i}", label=label(method))
        if key != "miou":
            ax.axhline(0, color="0.5", lw=0.8, ls="--")
        ax.set_xlabel("labelled training scenes")
        ax.set_ylabel(ylabel)
        ax.set_xticks(budgets)
    # one legend under the panels: inside a panel it hides the points it names
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 3), fontsize=8, frameon=False)
    fig.suptitle(f"mean over (fold, seed) runs; bars: paired bootstrap {round(100 * confidence)} % interval", fontsize=9)
    fig.tight_layout(rect=(0, 0.06 * ((len(names) + 2) // 3), 1, 0.96))  # room for the title
    return fig
