"""``bench pipeline``'s measurement: loader-fed and model-only steps timed in alternating blocks."""

import pytest
import torch

from diffhrnet_lab.experiments import pipeline_bench


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_paired_blocks_measure_input_wait_and_step_time_exactly(monkeypatch):
    """A fake clock: each batch takes 10 ms to arrive, each step 20 ms; the loop then runs at
    1/30 ms, the model alone at 1/20 ms (overhead 1.5), and every wait is 10 ms."""
    clock = Clock()
    monkeypatch.setattr(pipeline_bench.time, "perf_counter", clock)
    served, stepped = [], []

    def loader():
        for i in range(100):
            clock.now += 0.010
            served.append(i)
            yield ("fed", i)

    def step(batch, k):
        clock.now += 0.020
        stepped.append((batch[0], k))

    sps, mo, waits = pipeline_bench._paired(loader, ("fixed", -1), step, torch.device("cpu"), steps=12, warmup=3)
    assert sps == pytest.approx(1 / 0.030) and mo == pytest.approx(1 / 0.020) and mo / sps == pytest.approx(1.5)
    assert waits == pytest.approx([0.010] * 15)
    assert served == list(range(15))  # warm-up + 3 blocks of 4: the loader is asked for exactly that
    fed = [k for kind, k in stepped if kind == "fed"]
    assert fed == list(range(15))
    blocks = [stepped[6 + 8 * b: 6 + 8 * (b + 1)] for b in range(3)]
    assert all([kind for kind, _ in blk] == ["fed"] * 4 + ["fixed"] * 4 for blk in blocks)
