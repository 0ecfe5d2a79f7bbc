"""Notebook plumbing: papermill parameter checking and an end-to-end papermill sweep (smoke profile).

The notebooks themselves are executed by nbval (``make test`` runs ``pytest --nbval-lax notebooks``).
"""

from __future__ import annotations

import json

import nbformat
import pytest

from diffhrnet_lab.experiments.sweep import aggregate, markdown_table, run_sweep
from tests.helpers import NOTEBOOKS

pm = pytest.importorskip("papermill")


def test_unknown_parameter_stops_at_the_check_cell(tmp_path):
    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(str(NOTEBOOKS / "00_data_tour.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters={"profile": "smoke", "n_tile": 3}, progress_bar=False, cwd=str(NOTEBOOKS))
    assert "unknown notebook parameter 'n_tile'" in e.value.evalue and "n_tiles" in e.value.evalue
    nb = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    failed = [i for i, c in enumerate(code) if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert failed == [3], "the cell right after the parameters (and papermill's injected cell) fails"


def test_mistyped_parameter_value(tmp_path):
    with pytest.raises(pm.PapermillExecutionError, match="should be a int"):
        pm.execute_notebook(str(NOTEBOOKS / "00_data_tour.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters={"profile": "smoke", "n_tiles": "five"}, progress_bar=False, cwd=str(NOTEBOOKS))


def test_every_notebook_has_parameters_cell_with_profile_and_objectives():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and "profile = " in tagged[0].source, path.name
        if path.name[:2].isdigit():
            assert "Learning objectives" in nb.cells[0].source and "Exercises" in nb.cells[-1].source, path.name
        assert path.stat().st_size < 3e6, f"{path.name} is over 3 MB"


def test_papermill_sweep_of_two_configurations_aggregates(tmp_path):
    configs = {"t-stages-none": {"method": "diffhrnet", "stages": "none"},
               "t-stages-late": {"method": "diffhrnet", "stages": "late", "fusion": "add"}}
    results = tmp_path / "results"
    run_sweep(configs, "smoke", notebook=NOTEBOOKS / "experiment.ipynb", results_dir=results,
              executed_dir=tmp_path / "executed", runs_dir=tmp_path / "runs")
    rows = aggregate(results)
    assert [r["run"] for r in rows] == ["t-stages-late", "t-stages-none"]
    assert all(r["profile"] == "smoke" for r in rows)
    for r in rows:  # the step picked on the validation scenes, reported on test scenes it never saw
        summary = json.loads((tmp_path / "runs" / r["run"] / "summary.json").read_text())
        assert r["val_miou"] == summary["best_miou"] and r["best_step"] == summary["best_step"]
        assert r["test_groups"] and set(r["test_groups"]).isdisjoint(r["train_groups"] + r["val_groups"])
        assert r["miou"] != r["val_miou"]
    assert rows[0]["stages"] == "late" and rows[0]["fusion"] == "add"
    table = markdown_table(rows)
    assert table.count("\n") == 3 and "| t-stages-late | diffhrnet | late | add |" in table
    assert f"| {100 * rows[0]['val_miou']:.1f} | {100 * rows[0]['miou']:.1f} |" in table
    assert (tmp_path / "executed" / "t-stages-none.ipynb").exists()


def test_experiment_defaults_keep_a_smoke_run_out_of_the_quick_folders(tmp_path):
    """``make test`` runs experiment.ipynb in the smoke profile with its default folders: its checkpoints
    and result must not land where a quick run by hand resumes and reads (``../runs/sweep``, ``../results``)."""
    work = tmp_path / "notebooks"
    work.mkdir()
    pm.execute_notebook(str(NOTEBOOKS / "experiment.ipynb"), str(work / "out.ipynb"),
                        parameters={"profile": "smoke", "method": "hrnet"}, progress_bar=False, cwd=str(work))
    result = json.loads((tmp_path / "results_smoke" / "experiment.json").read_text())
    assert result["profile"] == "smoke" and result["method"] == "hrnet"
    assert (tmp_path / "runs" / "sweep_smoke" / "experiment" / "summary.json").is_file()
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs" / "sweep").exists()
