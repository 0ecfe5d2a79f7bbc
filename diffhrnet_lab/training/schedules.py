"""Learning-rate schedules of the two loops, as pure functions of the step (so resume is exact)."""

from __future__ import annotations

import math


def cosine_with_warmup(step: int, lr: float, warmup_steps: int, steps: int) -> float:
    """DDPM pretraining: linear warm-up, then cosine decay to zero (diffusers'
    ``get_cosine_schedule_with_warmup``, the ``train_unconditional.py`` default)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def poly_with_warmup(step: int, lr: float, warmup_steps: int, steps: int, power: float = 0.9) -> float:
    """Fine-tuning: linear warm-up, then mmsegmentation's poly decay ``lr·(1 - step/steps)^power``
    (HRNet's schedule, Sun et al. 2019, §4.2 of the segmentation experiments)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    return lr * (1 - min(step, steps - 1) / steps) ** power
