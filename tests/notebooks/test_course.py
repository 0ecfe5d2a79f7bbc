"""The course's teaching frame, read from the notebooks themselves and from their executed outputs.

* Every numbered notebook opens with the Colab badge and a time-per-profile table, ends with "What you
  should see", a cell that displays an interpretation computed by ``explore.interpret``, and the
  exercises, each with a collapsed solution.
* The interpretation a notebook displays carries the numbers the same notebook printed (run in the
  smoke profile with papermill): text and numbers cannot drift apart.
"""

from __future__ import annotations

import re

import nbformat
import pytest

from diffhrnet_lab.explore.notebook import colab_badge
from tests.helpers import NOTEBOOKS

NUMBERED = sorted(NOTEBOOKS.glob("0*.ipynb"))


@pytest.mark.parametrize("path", NUMBERED, ids=lambda p: p.name)
def test_notebook_opens_with_badge_and_times_and_ends_with_reading_and_solved_exercises(path):
    cells = nbformat.read(path, as_version=4).cells
    first = cells[0].source
    assert first.startswith(colab_badge(path.name)), "the badge opens the notebook"
    for profile in ("smoke", "quick", "colab"):
        assert re.search(rf"^\| {profile} \| [^|]+ \| [^|]+ \|$", first, re.M), f"no {profile} row in the time table"
    see = next(i for i, c in enumerate(cells) if c.cell_type == "markdown" and c.source.startswith("## What you should see"))
    reading = cells[see + 1]
    assert reading.cell_type == "code" and "diffhrnet_lab.explore.interpret import" in reading.source
    assert reading.source.rstrip().endswith("Markdown(reading)")
    assert see + 2 == len(cells) - 1, "What you should see, the reading, then the exercises close the notebook"
    exercises = cells[-1].source
    asked = re.findall(r"^\d+\. ", exercises, re.M)
    solved = exercises.count("<details><summary>Solution</summary>")
    assert len(asked) >= 3 and solved == len(asked) and exercises.count("</details>") == solved


def _run(path, tmp_path, **params):
    pm = pytest.importorskip("papermill")
    out = tmp_path / path.name
    pm.execute_notebook(str(path), str(out), parameters={"profile": "smoke", **params}, progress_bar=False,
                        cwd=str(tmp_path))
    return nbformat.read(out, as_version=4).cells


def _text(cell) -> str:
    parts = []
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream":
            parts.append(o["text"])
        elif "data" in o:
            parts.append(o["data"].get("text/markdown", ""))
    return "".join(parts)


def _reading(cells) -> str:
    see = next(i for i, c in enumerate(cells) if c.cell_type == "markdown" and c.source.startswith("## What you should see"))
    text = _text(cells[see + 1])
    assert text, "the reading cell displayed nothing"
    return text


@pytest.mark.slow
@pytest.mark.notebooks
def test_00_reading_quotes_the_class_shares_the_notebook_printed(tmp_path):
    cells = _run(NOTEBOOKS / "00_data_tour.ipynb", tmp_path)
    code = [c for c in cells if c.cell_type == "code"]
    printed = next(_text(c) for c in code if "counts.sum():5.1f" in c.source)
    shares = {name: float(v) for name, v in re.findall(r"^(\w+)\s+([\d.]+) %$", printed, re.M)}
    top, rare = max(shares, key=shares.get), min((k for k in shares if shares[k] > 0), key=shares.get)
    reading = _reading(cells)
    assert f"**{top.replace('_', ' ').capitalize()}** is the most frequent class ({shares[top]:.1f} % of labelled pixels)" in reading
    assert f"**{rare.replace('_', ' ')}** is the rarest present ({shares[rare]:.1f} %)" in reading
    dubai = dict(re.findall(r"'(\w+)': '([\d.]+) %'", "".join(_text(c) for c in code if "dcounts" in c.source)))
    assert dubai, "the Dubai scenes are embedded: 00 prints their class shares"
    dtop = max(dubai, key=lambda k: float(dubai[k]))
    assert f"**{dtop.capitalize()}** is the most frequent class ({dubai[dtop]} % of labelled pixels)" in reading


@pytest.mark.slow
@pytest.mark.notebooks
def test_01_reading_quotes_the_denoising_errors_the_notebook_printed(tmp_path):
    cells = _run(NOTEBOOKS / "01_ddpm_pretraining.ipynb", tmp_path, train_steps=0, n_samples=2)
    printed = "".join(_text(c) for c in cells if c.cell_type == "code")
    trained, untrained = re.search(r"embedded: ([\d.]+)\s+untrained: ([\d.]+)", printed).groups()
    reading = _reading(cells)
    assert f"tiles it never saw is {trained}" in reading and f"U-Net's ({untrained})" in reading
    assert re.search(r"SNR = 1\) at t = \d+ \(linear\) and t = \d+ \(cosine\)", reading)
