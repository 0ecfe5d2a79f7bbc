"""The course as a student gets it: the notebooks' install cell, the built wheel, chained stages.

* The install cell installs from PyPI or from ``$DHL_PACKAGE``, never from a repository URL that
  nothing publishes, and says what to do when that fails.
* A wheel built from this checkout and installed with ``pip --target`` into an empty folder runs
  notebook 00 from an unrelated working directory: the samples and DDPM bundles travel inside it.
* ``run_dir`` / ``ddpm_dir`` / ``data_root`` chain the notebooks: 02 reads the DDPM that 01 trained.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

from diffhrnet_lab.config import embedded_ddpm_dir, profile_config
from diffhrnet_lab.errors import DataError
from diffhrnet_lab.explore.notebook import find_bundle, stage_paths

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
NUMBERED = sorted(NOTEBOOKS.glob("0*.ipynb"))


def _code_cells(path: Path) -> list:
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def _stream_text(path: Path) -> str:
    out = []
    for cell in _code_cells(path):
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                out.append(o["text"])
    return "".join(out)


# -- the install cell -----------------------------------------------------------------------------------

def _run_install_cell(source: str, env: dict[str, str], pip_rc: int) -> list[list[str]]:
    """Execute an install cell as a fresh runtime would (the kit not importable), pip stubbed."""
    calls: list[list[str]] = []

    class Done:
        returncode = pip_rc

    def fake_run(cmd, *a, **kw):
        calls.append(list(cmd))
        return Done()

    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("%"))
    import importlib.util

    real_find_spec, real_run, old_env = importlib.util.find_spec, subprocess.run, dict(os.environ)
    importlib.util.find_spec = lambda name, *a: None if name == "diffhrnet_lab" else real_find_spec(name, *a)
    subprocess.run = fake_run
    os.environ.pop("DHL_PACKAGE", None)
    os.environ.update(env)
    try:
        exec(compile(code, "<install cell>", "exec"), {})
    finally:
        importlib.util.find_spec, subprocess.run = real_find_spec, real_run
        os.environ.clear()
        os.environ.update(old_env)
    return calls


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_install_cell_uses_pypi_or_dhl_package_never_an_unpublished_url(path):
    source = _code_cells(path)[0].source
    assert "github.com" not in source and "DHL_REPO_URL" not in source, path.name
    calls = _run_install_cell(source, {}, pip_rc=0)
    assert calls and calls[0][-1] == "diffhrnet_lab", "without $DHL_PACKAGE: the PyPI name"
    wheel = "/content/diffhrnet_lab-0.1.0-py3-none-any.whl"
    assert _run_install_cell(source, {"DHL_PACKAGE": wheel}, pip_rc=0)[0][-1] == wheel
    with pytest.raises(RuntimeError, match="DHL_PACKAGE"):
        _run_install_cell(source, {}, pip_rc=1)


# -- the wheel ------------------------------------------------------------------------------------------

def _source_files() -> list[str]:
    """What a clean clone holds: tracked files plus new ones not ignored (this branch's uncommitted work)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


@pytest.mark.slow
@pytest.mark.notebooks
def test_wheel_installed_with_pip_runs_notebook_00_from_any_directory(tmp_path):
    src = tmp_path / "src"
    files = _source_files()
    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(src)], check=True, cwd=tmp_path)
    (wheel,) = dist.glob("diffhrnet_lab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    samples = [f for f in files if f.startswith("data_samples/") and not f.endswith(".aux.xml")]
    missing = [f for f in samples if "diffhrnet_lab/" + f not in names]
    assert samples and not missing, f"data_samples files not in the wheel: {missing[:5]}"

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, cwd=tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DHL_SAMPLES_DIR", "DHL_DUBAI_DIR")}
    env.update(PYTHONPATH=str(site), DHL_PROFILE="smoke", MPLBACKEND="agg")
    probe = subprocess.run([sys.executable, "-c", "import diffhrnet_lab, diffhrnet_lab.config as c; "
                            "print(diffhrnet_lab.__file__); print(c.samples_dir()); print(c.embedded_ddpm_dir())"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(p).resolve().is_relative_to(site.resolve()) for p in probe), probe

    shutil.copy(NOTEBOOKS / "00_data_tour.ipynb", work / "00.ipynb")
    subprocess.run([sys.executable, "-m", "papermill", "00.ipynb", "00_out.ipynb", "-p", "profile", "smoke",
                    "--no-progress-bar", "--cwd", str(work)], cwd=work, env=env, check=True, capture_output=True)
    text = _stream_text(work / "00_out.ipynb")
    assert f"data: {site.resolve() / 'diffhrnet_lab' / 'data_samples' / 'labelled'}" in text.replace(str(site), str(site.resolve()))
    assert "10 labelled tiles" in text


# -- chained stages -------------------------------------------------------------------------------------

def test_every_numbered_notebook_declares_the_three_path_parameters_empty():
    for path in NUMBERED:
        params = next(c for c in _code_cells(path) if "parameters" in c.metadata.get("tags", []))
        for name in ("data_root", "ddpm_dir", "run_dir"):
            assert f'{name} = ""' in params.source, (path.name, name)
        call = "stage_paths(cfg, data_root, ddpm_dir, run_dir" + (", dataset)" if "dataset = " in params.source else ")")
        assert call in _code_cells(path)[2].source, (path.name, call)


def test_stage_paths_fall_back_to_the_embedded_samples_and_ddpm():
    p = stage_paths(profile_config("smoke"))
    assert p.ddpm == embedded_ddpm_dir() and p.ddpm_from == "embedded" and p.run is None
    assert p.data.name == "labelled" and p.scheme == "samples"
    assert p.out("ddpm", "runs/notebook_ddpm") == Path("runs/notebook_ddpm_smoke")
    assert stage_paths(profile_config("quick")).out("ddpm", "runs/notebook_ddpm") == Path("runs/notebook_ddpm")
    cfg = p.apply(profile_config("smoke"))
    assert cfg.features.checkpoint == str(embedded_ddpm_dir()) and cfg.data.root == str(p.data)


def test_ddpm_dir_accepts_a_bundle_a_pretrain_folder_or_a_course_run_dir(tmp_path):
    bundle = tmp_path / "run" / "ddpm" / "final"
    shutil.copytree(embedded_ddpm_dir(), bundle)
    for given in (bundle, bundle.parent, tmp_path / "run"):
        assert find_bundle(given) == bundle
        assert stage_paths(profile_config("smoke"), ddpm_dir=str(given)).ddpm == bundle
    chained = stage_paths(profile_config("smoke"), run_dir=str(tmp_path / "run"))
    assert chained.ddpm == bundle and chained.ddpm_from.startswith("run_dir")
    assert chained.out("finetune", "x") == tmp_path / "run" / "finetune"
    # a run_dir that 01 has not written yet: the embedded DDPM, not an error
    assert stage_paths(profile_config("smoke"), run_dir=str(tmp_path / "new")).ddpm == embedded_ddpm_dir()


def test_missing_ddpm_or_dataset_is_an_error_naming_the_folder(tmp_path):
    with pytest.raises(DataError, match=f"ddpm_dir {tmp_path / 'nothing'}: no DDPM bundle"):
        stage_paths(profile_config("smoke"), ddpm_dir=str(tmp_path / "nothing"))
    (tmp_path / "data" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match=f"data_root {tmp_path / 'data'}: expected a labelled folder"):
        stage_paths(profile_config("smoke"), data_root=str(tmp_path / "data"))


def test_data_root_scheme_from_the_folder_name(make_labelled, tmp_path):
    root = make_labelled(n=2, root=tmp_path / "loveda_small")
    p = stage_paths(profile_config("smoke"), data_root=str(root))
    assert p.data == root and p.scheme == "loveda"
    assert stage_paths(profile_config("smoke"), data_root=str(make_labelled(n=2))).scheme == "samples"


@pytest.mark.slow
@pytest.mark.notebooks
def test_02_reads_the_ddpm_that_01_trained_into_the_shared_run_dir(tmp_path):
    pm = pytest.importorskip("papermill")
    run_dir = tmp_path / "course"
    common = {"profile": "smoke", "run_dir": str(run_dir)}
    pm.execute_notebook(str(NOTEBOOKS / "01_ddpm_pretraining.ipynb"), str(tmp_path / "01.ipynb"), parameters=common,
                        progress_bar=False, cwd=str(tmp_path))
    bundle = run_dir / "ddpm" / "final"
    meta = json.loads((bundle / "ddpm.json").read_text())
    assert meta and (bundle / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert f"trained DDPM bundle: {bundle}" in _stream_text(tmp_path / "01.ipynb")
    pm.execute_notebook(str(NOTEBOOKS / "02_features_per_timestep.ipynb"), str(tmp_path / "02.ipynb"),
                        parameters=common, progress_bar=False, cwd=str(tmp_path))
    text = _stream_text(tmp_path / "02.ipynb")
    assert f"DDPM bundle loaded: {bundle} (from run_dir" in text
    assert str(embedded_ddpm_dir()) not in text


def test_04_passes_the_chained_ddpm_and_dataset_to_each_experiment(make_labelled, tmp_path):
    from diffhrnet_lab.experiments.sweep import experiment_config

    root = make_labelled(n=2, root=tmp_path / "dubai_aerial")
    cfg = experiment_config("smoke", method="diffhrnet", ddpm_dir=str(tmp_path / "b"), data_root=str(root))
    assert cfg.features.checkpoint == str(tmp_path / "b")
    assert cfg.data.root == str(root) and cfg.data.scheme == "dubai"
    plain = experiment_config("smoke", method="diffhrnet", ddpm_dir="", data_root="")
    assert plain.features.checkpoint == "" and plain.data.root == "" and plain.data.scheme == "samples"
