"""Ablation sweeps: one experiment per configuration, then one table.

An *experiment* (:func:`run_experiment`) fine-tunes one configuration and writes
``results/<run>.json``.  A *sweep* runs the parameterised notebook ``notebooks/experiment.ipynb``
once per configuration through papermill, one process after another (each kernel's memory is
returned to the system between runs), so every run also leaves an executed notebook to read.
A kernel that dies (usually memory) is reported as such with the run's name, not as a hang.
:func:`aggregate` reads every ``results/*.json`` into one table.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

from ..config import profile_config, replace
from ..data.labels import dataset_scheme
from ..data.layouts import train_val_test_pairs
from ..errors import ConfigError
from ..fileio import atomic_write_json
from ..fileio import markdown_table as _markdown

# name → notebook parameters; the keys of each dict are parameters of notebooks/experiment.ipynb
ABLATIONS: dict[str, dict[str, dict[str, Any]]] = {
    "stages": {f"stages-{s}": {"method": "diffhrnet", "stages": s} for s in ("none", "late", "multistage")},
    "fusion": {f"fusion-{f}": {"method": "diffhrnet", "fusion": f} for f in ("concat", "add", "gated")},
    "timesteps": {f"t-{'-'.join(map(str, t))}": {"method": "diffhrnet", "timesteps": list(t)}
                  for t in ((50,), (250,), (50, 150, 250), (50, 250, 500))},
    "blocks": {f"blocks-{'-'.join(map(str, b))}": {"method": "diffhrnet", "blocks": list(b)} for b in ((0,), (1,), (0, 1), (1, 2))},
    "budget": {f"{m}-budget{k}": {"method": m, "label_budget": k} for m in ("hrnet", "diffhrnet") for k in (1, 2, 4, 0)},
    "ddpm": {f"ddpm-{'finetuned' if f else 'frozen'}": {"method": "diffhrnet", "finetune_ddpm": f} for f in (False, True)},
}

# An experiment picks its best step on the validation scenes and reports it on this share of the
# scenes, which neither training nor the selection saw (picking on the reported scenes flatters
# every configuration); 0 reports the validation score itself.
TEST_FRACTION = 0.2

# The parameters of one experiment (and of notebooks/experiment.ipynb).  An empty value ("", [], None)
# means "the profile's": defaults live in config.py only, so a full-profile sweep runs the full
# profile's blocks and timesteps unless a configuration names others.
EXPERIMENT_PARAMS = ("method", "stages", "fusion", "timesteps", "blocks", "label_budget", "finetune_ddpm", "seed",
                     "test_fraction", "data_root", "dataset", "ddpm_dir")  # the last three: a chained course (04 passes 01's DDPM, the data)


def experiment_config(profile: str, **params: Any):
    """The profile's config with the experiment's non-empty parameters applied."""
    unknown = sorted(set(params) - set(EXPERIMENT_PARAMS))
    if unknown:
        raise ConfigError(f"unknown experiment parameter(s) {unknown}; valid: {', '.join(EXPERIMENT_PARAMS)}")
    given = {k: v for k, v in params.items() if v is not None and v != "" and v != []}
    cfg = profile_config(profile)
    model = {k: given[k] for k in ("method", "stages", "fusion") if k in given}
    if "finetune_ddpm" in given:
        model["finetune_ddpm"] = bool(given["finetune_ddpm"])
    cfg.model = replace(cfg.model, **model)
    feats = {k: tuple(int(v) for v in given[k]) for k in ("timesteps", "blocks") if k in given}
    cfg.features = replace(cfg.features, **feats)
    if "label_budget" in given:
        cfg.data = replace(cfg.data, label_budget=int(given["label_budget"]) or None)
    if "seed" in given:
        cfg.train = replace(cfg.train, seed=int(given["seed"]))
    cfg.data = replace(cfg.data, test_fraction=float(given.get("test_fraction", TEST_FRACTION)))
    if "data_root" in given:
        cfg.data = replace(cfg.data, root=str(given["data_root"]),
                           scheme=dataset_scheme(given["data_root"], cfg.data.scheme))
    if "dataset" in given:
        from ..data.layouts import resolve_dataset

        cfg.data = replace(cfg.data, dataset=str(given["dataset"]),
                           scheme=resolve_dataset(cfg.data.resolved_root(), str(given["dataset"])).scheme.name)
    if "ddpm_dir" in given:
        cfg.features = replace(cfg.features, checkpoint=str(given["ddpm_dir"]))
    return cfg


def run_experiment(run: str, profile: str, results_dir: str | os.PathLike = "results", runs_dir: str | os.PathLike = "runs/sweep",
                   progress: bool = False, **params: Any) -> dict[str, Any]:
    """Fine-tune one configuration (``label_budget=0``: all training scenes), score its best step
    (picked on the validation scenes) once on the test scenes, and write ``results/<run>.json``:
    ``miou`` is the test score, ``val_miou`` the selection's."""
    from ..inference.evaluate import score_checkpoint
    from ..training.finetune import finetune

    cfg = experiment_config(profile, **params)
    t0 = time.time()
    summary = finetune(cfg, Path(runs_dir) / run, resume="latest", progress=progress)
    _, _, _, test = train_val_test_pairs(cfg.data)
    best = (score_checkpoint(Path(runs_dir) / run / "best", test, cfg.features, cfg.train.eval_window)[2].as_dict()
            if test else summary.get("best_scores") or {})
    used = {"method": cfg.model.method, "stages": cfg.model.stages, "fusion": cfg.model.fusion,
            "timesteps": list(cfg.features.timesteps), "blocks": list(cfg.features.blocks),
            "label_budget": cfg.data.label_budget or 0, "finetune_ddpm": cfg.model.finetune_ddpm, "seed": cfg.train.seed}
    result = {"run": run, "profile": profile, **used, "miou": best["miou"], "oa": best.get("oa"),
              "iou": best.get("iou"), "val_miou": summary["best_miou"], "best_step": summary["best_step"],
              "train_groups": summary["train_groups"], "val_groups": summary["val_groups"],
              "test_groups": sorted({p.group for p in test}), "wall_s": round(time.time() - t0, 1)}
    atomic_write_json(Path(results_dir) / f"{run}.json", result)
    return result


def run_sweep(configs: dict[str, dict[str, Any]], profile: str, notebook: str | os.PathLike = "notebooks/experiment.ipynb",
              results_dir: str | os.PathLike = "results", executed_dir: str | os.PathLike = "runs/sweep/notebooks",
              runs_dir: str | os.PathLike = "runs/sweep", kernel_name: str | None = None) -> list[dict[str, Any]]:
    """Execute ``notebook`` once per configuration with papermill, one after another."""
    import papermill as pm

    results_dir, executed_dir = Path(results_dir), Path(executed_dir)
    executed_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for run, params in configs.items():
        target = executed_dir / f"{run}.ipynb"
        print(f"[sweep] {run}: {params}")
        try:
            pm.execute_notebook(str(notebook), str(target), parameters={"run": run, "profile": profile,
                                                                       "results_dir": str(Path(results_dir).resolve()),
                                                                       "runs_dir": str(Path(runs_dir).resolve()), **params},
                                kernel_name=kernel_name, progress_bar=False, cwd=str(Path(notebook).parent))
        except pm.PapermillExecutionError as exc:
            raise RuntimeError(f"sweep run '{run}' failed in cell {exc.cell_index}: {exc.ename}: {exc.evalue} "
                               f"(executed notebook: {target})") from None
        except RuntimeError as exc:
            if "Kernel died" in str(exc) or "kernel" in str(exc).lower():
                raise RuntimeError(f"sweep run '{run}': the kernel died ({exc}); this is usually memory — "
                                   "try a smaller profile or batch size") from None
            raise
        out.append(json.loads((results_dir / f"{run}.json").read_text()))
    return out


def aggregate(results_dir: str | os.PathLike = "results", runs: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """All ``results/*.json`` (or the named runs) as rows sorted by run name."""
    results_dir = Path(results_dir)
    files = sorted(results_dir.glob("*.json")) if runs is None else [results_dir / f"{r}.json" for r in runs]
    rows = [json.loads(f.read_text()) for f in files if f.is_file()]
    if not rows:
        raise ConfigError(f"{results_dir}: no results to aggregate")
    return sorted(rows, key=lambda r: r["run"])


def markdown_table(rows: list[dict[str, Any]], columns: Iterable[str] = ("run", "method", "stages", "fusion", "timesteps",
                                                                           "blocks", "label_budget", "val_miou", "miou")) -> str:
    """The sweep's results as a markdown table (mIoU and OA in percent; ``miou`` on the test scenes,
    ``val_miou`` on the scenes that picked the step)."""
    cols = list(columns)
    cells = [[f"{100 * r[c]:.1f}" if c in ("miou", "val_miou", "oa") and isinstance(r.get(c), float) else str(r.get(c)) for c in cols]
             for r in rows]
    return _markdown(cols, cells)


def plot_budget(rows: list[dict[str, Any]]):
    """mIoU against label budget, one line per method (budget 0 = all training scenes)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for method in sorted({r["method"] for r in rows}):
        pts = sorted((len(r["train_groups"]), 100 * r["miou"]) for r in rows if r["method"] == method)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
    ax.set_xlabel("labelled training scenes")
    ax.set_ylabel("test mIoU %")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
