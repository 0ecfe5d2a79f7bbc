"""Each notebook's closing interpretation, written from its own results.

A sentence such as "low vegetation covers a third of the pixels" typed into a notebook drifts from
the table above it as soon as the data, the DDPM or the defaults change.  These functions take the
objects a notebook has just computed (class pixel counts, ᾱ_t and denoising losses, linear-probe
scores, fine-tuning scores, a sweep's rows) and return markdown whose numbers are those objects,
formatted the way the notebook prints them; comparison words (above / below / within noise) are
chosen from the numbers.  ``tests/explore/test_interpret.py`` checks both directions of every
comparison, and ``tests/notebooks/test_interpretation.py`` that an executed notebook's closing text
carries the numbers the same notebook printed.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

# Seed-to-seed standard deviation of one-scene fine-tunings on the Dubai scenes is 4-13 mIoU points
# (BENCHMARKS.md, label efficiency): a gap smaller than this between two single runs says nothing.
SEED_SPREAD_POINTS = 5.0


def pretty(name: str) -> str:
    """``low_vegetation`` → ``low vegetation``: class and run names as prose."""
    return name.replace("_", " ")


def compare(value: float, reference: float, noise: float) -> str:
    """``above`` / ``below`` ``reference`` when the gap exceeds ``noise``, else ``within noise of``."""
    if value - reference > noise:
        return "above"
    if reference - value > noise:
        return "below"
    return "within noise of"


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def class_balance(classes: Sequence[str], counts: Sequence[float]) -> str:
    """Notebook 00: which class dominates the labelled pixels, which is rarest, and what that does to
    overall accuracy (pixel-weighted) versus mIoU (class-weighted)."""
    counts = np.asarray(counts, dtype=float)
    if counts.sum() <= 0:
        raise ValueError("class_balance: no labelled pixels")
    share = counts / counts.sum()
    order = np.argsort(-share, kind="stable")
    top, rare = order[0], next(i for i in order[::-1] if share[i] > 0)
    lines = [f"**{pretty(classes[top]).capitalize()}** is the most frequent class ({_pct(share[top])} of labelled "
             f"pixels); **{pretty(classes[rare])}** is the rarest present ({_pct(share[rare])})."]
    lines.append(f"{pretty(classes[top]).capitalize()} is {share[top] / share[rare]:.0f} times as frequent as "
                 f"{pretty(classes[rare])}.")
    absent = [pretty(classes[i]) for i in range(len(classes)) if share[i] == 0]
    if absent:
        lines.append(f"Absent from these masks: {', '.join(absent)}.")
    n_present = int((share > 0).sum())
    lines.append(f"A model that never predicted {pretty(classes[rare])} would lose at most {100 * share[rare]:.1f} points of "
                 f"overall accuracy, but that class's IoU is 1/{n_present} of the mean IoU over the "
                 f"{n_present} classes present.")
    return " ".join(lines)


def snr_crossing(alphas_cumprod: Sequence[float]) -> int:
    """The first timestep where noise outweighs signal: SNR = ᾱ/(1−ᾱ) < 1, i.e. ᾱ < 0.5."""
    ab = np.asarray(alphas_cumprod, dtype=float)
    below = np.nonzero(ab < 0.5)[0]
    if not len(below):
        raise ValueError("snr_crossing: the schedule never reaches SNR < 1")
    return int(below[0])


def ddpm_summary(alphas: Mapping[str, Sequence[float]], trained_loss: float, untrained_loss: float) -> str:
    """Notebook 01: where each schedule's SNR crosses 1, and whether the denoiser learned anything
    (its ε-prediction error against an untrained U-Net's on the same tiles, noise and t)."""
    cross = {name: snr_crossing(ab) for name, ab in alphas.items()}
    parts = [f"t = {t} ({name})" for name, t in cross.items()]
    lines = [f"Signal and noise carry equal variance (SNR = 1) at {' and '.join(parts)}: beyond that step noise "
             "dominates, so features from later steps see less of the tile."]
    if len(cross) == 2:
        (a, ta), (b, tb) = cross.items()
        later, earlier = (a, b) if ta > tb else (b, a)
        if ta != tb:
            lines.append(f"The {later} schedule keeps the signal {abs(ta - tb)} steps longer than the {earlier} one.")
    ratio = untrained_loss / trained_loss if trained_loss > 0 else math.inf
    if trained_loss < 0.5 * untrained_loss:
        verdict = f"{ratio:.0f} times lower than"
        meaning = "it has learned what these tiles look like."
    elif trained_loss < untrained_loss:
        verdict = "lower than, but not half of,"
        meaning = "it has learned a little; train it longer before trusting its features."
    else:
        verdict = "no lower than"
        meaning = "it has learned nothing these tiles can show: do not fuse its features."
    lines.append(f"The DDPM's ε-prediction error on tiles it never saw is {trained_loss:.3f}, {verdict} an untrained "
                 f"U-Net's ({untrained_loss:.3f}): {meaning}")
    return " ".join(lines)


def _miou(v) -> float:
    return float(getattr(v, "miou", v))


def probe_summary(probe: Mapping[tuple[int, int], object], noise: float = 1.0) -> str:
    """Notebook 02: the best and worst (t, block) of a linear probe (values: mIoU in [0, 1] or
    :class:`~diffhrnet_lab.inference.metrics.Scores`), and per block whether the probe falls as t
    grows (``noise`` in points: smaller changes count as flat)."""
    if not probe:
        raise ValueError("probe_summary: no probe results")
    miou = {k: _miou(v) for k, v in probe.items()}
    best = max(miou, key=lambda k: (miou[k], -k[0], -k[1]))
    worst = min(miou, key=lambda k: (miou[k], k[0], k[1]))
    lines = [f"The best stream is t = {best[0]}, block {best[1]} (probe mIoU {_pct(miou[best])}); the worst is "
             f"t = {worst[0]}, block {worst[1]} ({_pct(miou[worst])})."]
    ts = sorted({t for t, _ in miou})
    if len(ts) > 1:
        for b in sorted({b for _, b in miou}):
            lo, hi = (ts[0], b), (ts[-1], b)
            if lo in miou and hi in miou:
                word = {"below": "falls", "above": "rises", "within noise of": "stays within "
                        f"{noise:.0f} point(s)"}[compare(100 * miou[hi], 100 * miou[lo], noise)]
                lines.append(f"Block {b}: from t = {ts[0]} to t = {ts[-1]} the probe {word} "
                             f"({_pct(miou[lo])} → {_pct(miou[hi])}).")
    return " ".join(lines)


def finetune_summary(test_scores: Mapping[str, object], baseline: str, scenes: Mapping[str, str],
                     best_steps: Mapping[str, int] | None = None, noise: float = SEED_SPREAD_POINTS) -> str:
    """Notebook 03: each model's test mIoU on the scene nobody trained or selected on, compared with
    ``baseline`` (above / below / within ``noise`` points: one seed on one scene)."""
    if baseline not in test_scores:
        raise ValueError(f"finetune_summary: baseline {baseline!r} not among {sorted(test_scores)}")
    base = 100 * _miou(test_scores[baseline])
    test = scenes["test"]
    picked = (f"best step selected on **{scenes['select']}**" if scenes.get("select")
              else "last step scored, nothing selected")
    lines = [f"Trained on **{scenes['train']}**, {picked}, scored on **{test}**. {baseline} scored {base:.1f} % "
             f"mIoU on {test}."]
    for name, s in test_scores.items():
        if name == baseline:
            continue
        m = 100 * _miou(s)
        word = compare(m, base, noise)
        gap = (f"within noise of {baseline} ({m - base:+.1f} points)" if word == "within noise of"
               else f"{abs(m - base):.1f} points {word} {baseline}")
        lines.append(f"{name} scored {m:.1f} % mIoU on {test}, {gap}.")
    if best_steps:
        lines.append("Best steps: " + ", ".join(f"{n} {s}" for n, s in best_steps.items()) + ".")
    lines.append(f"One seed on one scene: gaps under {noise:.0f} points are within the seed-to-seed spread "
                 "(BENCHMARKS.md); the label-efficiency rotation in notebook 04 is the measurement.")
    return " ".join(lines)


def ablation_summary(rows: Sequence[Mapping], reference: str | None = None, noise: float = SEED_SPREAD_POINTS) -> str:
    """Notebook 04: the best and worst configuration of a sweep, and every run against ``reference``
    (default: the first row) in points of test mIoU (``miou``: the best step, picked on validation
    scenes, scored on test scenes; ``experiments.sweep.run_experiment``)."""
    if not rows:
        raise ValueError("ablation_summary: no rows")
    by_run = {r["run"]: 100 * float(r["miou"]) for r in rows}
    ref = reference or rows[0]["run"]
    if ref not in by_run:
        raise ValueError(f"ablation_summary: reference run {ref!r} not among {sorted(by_run)}")
    best = max(by_run, key=by_run.get)
    worst = min(by_run, key=by_run.get)
    lines = [f"Best: **{best}** ({by_run[best]:.1f} % test mIoU); worst: **{worst}** ({by_run[worst]:.1f} %), "
             f"a spread of {by_run[best] - by_run[worst]:.1f} points."]
    for run, m in by_run.items():
        if run != ref:
            lines.append(f"{run} is {compare(m, by_run[ref], noise)} {ref} ({m - by_run[ref]:+.1f} points).")
    honest = all(r.get("test_groups") for r in rows)
    lines.append(f"One seed each: gaps under {noise:.0f} points are within the seed-to-seed spread. " + (
        "Each figure is the best step's score on test scenes that neither training nor the choice of step saw."
        if honest else "Some figures are the best step's score on the scenes that chose it (test_fraction=0), "
                       "which flatters those runs."))
    return " ".join(lines)
