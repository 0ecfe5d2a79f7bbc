"""Label efficiency on real imagery: does the DDPM help when labels are scarce?

The paper's claim (Wu et al., GRSL 2024, §I and §III) is that a DDPM pretrained on *unlabelled*
imagery gives HRNet features that make up for missing labels.  This experiment measures it the way
the few-label literature does (DDPM-Seg, Baranchuk et al. 2022, §4):

1. pretrain the DDPM on every image of the dataset as an unlabelled pool (labels unused);
2. hold one scene out for validation, never trained on;
3. fine-tune each method on 1, 2, 3 labelled scenes (nested: the 2-scene set contains the 1-scene
   set for a seed), for several seeds (the seed picks the scenes, the crops and the initialisation);
4. score every run on the whole held-out scene once, at the end of training: with so few labels
   there is no separate validation set to pick a "best" step on, and picking it on the held-out
   scene would flatter every method.

Methods: ``hrnet`` (no DDPM), ``ddpm_mlp`` (DDPM-Seg's pixel classifier: features alone),
``late`` and ``multistage`` Diff-HRNet.  DDPM methods use the feature cache (each tile's features
computed once and shared by all runs), so the comparison costs little more than HRNet alone.
Finished runs are skipped on a re-run and unfinished ones resume: the experiment survives a crash.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ProfileConfig, profile_config, replace
from ..data.datasets import find_pairs, first_per_group, groups_of
from ..errors import DataError
from ..fileio import atomic_write_csv, atomic_write_json, atomic_write_text, check_writable, markdown_table
from .methods import check_methods, label, method_model

def _check(cfg: ProfileConfig, root: Path) -> list[str]:
    le = cfg.label_efficiency
    check_methods(le.methods)
    groups = groups_of(first_per_group(find_pairs(root), cfg.data.max_per_group))
    if le.held_out not in groups:
        raise DataError(f"{root}: held-out scene '{le.held_out}' not found; scenes are {groups}")
    too_many = [b for b in le.budgets if not 1 <= b <= len(groups) - 1]
    if too_many:
        raise DataError(f"{root}: label budget(s) {too_many} impossible with {len(groups) - 1} training scene(s)")
    return groups


def pretrain_pool_ddpm(cfg: ProfileConfig, root: Path, out: Path, progress: bool = True) -> Path:
    """Step 1: the DDPM on every image of ``root/images`` (all scenes, labels unused); resumable."""
    from ..training.pretrain import pretrain

    final = out / "ddpm" / "final"
    if (final / "ddpm.json").exists():
        return final
    steps = cfg.label_efficiency.ddpm_steps or cfg.ddpm.steps
    dcfg = replace(cfg.ddpm, pool=str(root / "images"), steps=steps,
                   sample_every=min(cfg.ddpm.sample_every, steps), checkpoint_every=min(cfg.ddpm.checkpoint_every, steps))
    print(f"[label-efficiency] pretraining the DDPM ({dcfg.preset}, {steps} steps) on {root / 'images'}")
    return pretrain(dcfg, out / "ddpm", resume="latest", progress=progress)


def run_config(cfg: ProfileConfig, root: Path, ddpm: Path, cache_dir: Path, method: str, budget: int,
               seed: int) -> ProfileConfig:
    """The fine-tuning settings of one (method, budget, seed) run.  ``cache_dir`` is where tile features
    go unless ``features.cache_dir`` names another (a second experiment reusing a DDPM's features)."""
    le = cfg.label_efficiency
    steps = le.train_steps or cfg.train.steps
    return dataclasses.replace(
        cfg,
        data=replace(cfg.data, root=str(root), val_groups=(le.held_out,), label_budget=budget, seed=seed),
        model=method_model(cfg.model, method),
        features=replace(cfg.features, checkpoint=str(ddpm), cache=True, cache_dir=cfg.features.cache_dir or str(cache_dir)),
        train=replace(cfg.train, steps=steps, seed=seed, eval_every=steps,
                      checkpoint_every=min(cfg.train.checkpoint_every, steps)),
    )


def label_efficiency(data: str | os.PathLike, out_dir: str | os.PathLike, cfg: ProfileConfig | None = None,
                     ddpm: str | os.PathLike | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the whole experiment into ``out_dir``; return (and write) the table.

    Writes ``runs/<method>_b<budget>_s<seed>/`` (each a fine-tuning run), ``results.csv`` (one row
    per run), ``label_efficiency.json`` (mean ± std per method and budget), ``table.md`` and
    ``label_efficiency.png``.  ``ddpm``: use this bundle instead of pretraining one.
    """
    from ..training.finetune import finetune

    cfg = cfg or profile_config()
    root = Path(data)
    out = check_writable(out_dir)
    _check(cfg, root)
    le = cfg.label_efficiency
    bundle = Path(ddpm) if ddpm else pretrain_pool_ddpm(cfg, root, out, progress)
    rows = []
    for budget in le.budgets:
        for seed in le.seeds:
            for method in le.methods:
                run = out / "runs" / f"{method}_b{budget}_s{seed}"
                if (run / "summary.json").exists():
                    summary = json.loads((run / "summary.json").read_text())
                else:
                    print(f"[label-efficiency] {method}, {budget} labelled scene(s), seed {seed}")
                    summary = finetune(run_config(cfg, root, bundle, out / "feature_cache", method, budget, seed),
                                       run, resume="latest", progress=progress)
                hist = summary["history"]
                rows.append({"method": method, "budget": budget, "seed": seed, "miou": summary["best_miou"],
                             "train_groups": " ".join(summary["train_groups"]),
                             "seconds": hist[-1]["seconds"] if hist else 0.0})
    result = {"profile": cfg.name, "data": str(root), "held_out": le.held_out, "ddpm": str(bundle),
              "train_steps": le.train_steps or cfg.train.steps, "rows": rows, "table": summarise(rows)}
    atomic_write_csv(out / "results.csv", rows, ["method", "budget", "seed", "miou", "train_groups", "seconds"])
    atomic_write_json(out / "label_efficiency.json", result)
    atomic_write_text(out / "table.md", markdown(result["table"], le.budgets) + "\n")
    from ..explore.viz import save_figure

    save_figure(plot(result["table"]), out / "label_efficiency.png")
    print(markdown(result["table"], le.budgets))
    return result


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation of mIoU over seeds, per (method, budget), and the gap to
    HRNet-only at the same budget (mIoU points)."""
    table = []
    for method in dict.fromkeys(r["method"] for r in rows):
        for budget in sorted({r["budget"] for r in rows}):
            v = [100 * r["miou"] for r in rows if r["method"] == method and r["budget"] == budget]
            base = [100 * r["miou"] for r in rows if r["method"] == "hrnet" and r["budget"] == budget]
            table.append({"method": method, "budget": budget, "n": len(v), "mean": float(np.mean(v)),
                          "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                          "vs_hrnet": float(np.mean(v) - np.mean(base)) if base else None})
    return table


def markdown(table: list[dict[str, Any]], budgets) -> str:
    """Mean ± std per method and budget, with the gap to HRNet-only in brackets."""
    rows = []
    for method in dict.fromkeys(r["method"] for r in table):
        cells = []
        for b in budgets:
            r = next((r for r in table if r["method"] == method and r["budget"] == b), None)
            if r is None:
                cells.append("")
                continue
            gap = f" ({r['vs_hrnet']:+.1f})" if r["vs_hrnet"] is not None and method != "hrnet" else ""
            cells.append(f"{r['mean']:.1f} ± {r['std']:.1f}{gap}")
        rows.append([method, *cells])
    return markdown_table(["method", *(f"{b} scene(s)" for b in budgets)], rows)


def plot(table: list[dict[str, Any]]):
    """mIoU against labelled scenes, one line per method, error bars one standard deviation."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for method in dict.fromkeys(r["method"] for r in table):
        pts = sorted((r["budget"], r["mean"], r["std"]) for r in table if r["method"] == method)
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                    label=label(method))
    ax.set_xlabel("labelled training scenes")
    ax.set_ylabel("held-out mIoU %")
    ax.set_xticks(sorted({r["budget"] for r in table}))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
