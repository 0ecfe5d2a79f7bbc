import csv
import subprocess
import sys

import numpy as np
import pytest

from diffhrnet_lab.cli import main
from diffhrnet_lab.data.io import write_geotiff


def test_check_data_reports_classes(make_labelled, capsys):
    root = make_labelled(2)
    assert main(["check-data", str(root)]) == 0
    out = capsys.readouterr().out
    assert "2 tiles in 2 scene(s), 3 band(s)" in out and "impervious" in out


def test_bad_input_is_one_clear_line_not_a_traceback(make_labelled):
    root = make_labelled(1)
    write_geotiff(root / "masks" / "t0.tif", np.full((40, 48), 9, np.uint8))
    r = subprocess.run([sys.executable, "-m", "diffhrnet_lab.cli", "check-data", str(root)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "masks/t0.tif: 1 value(s) not in label scheme 'samples': value 9: 1920 px" in r.stderr


@pytest.mark.slow
def test_demo_writes_figure(tmp_path, samples_dir):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--data", str(samples_dir)]) == 0
    fig = tmp_path / "demo" / "samples.png"
    assert fig.stat().st_size > 20_000 and fig.read_bytes()[:4] == b"\x89PNG"


def test_unwritable_output_folder_is_refused_up_front(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["demo", "--out", str(blocker / "sub")]) == 2
    assert "not writable" in capsys.readouterr().err
@pytest.mark.slow
def test_cli_finetune_then_evaluate(tmp_path, capsys):
    assert main(["finetune", "--profile", "smoke", "--method", "hrnet", "--out", str(tmp_path / "run"),
                 "--set", "train.steps=2", "--set", "train.eval_every=2"]) == 0
    assert "best validation mIoU" in capsys.readouterr().out
    assert main(["finetune", "--profile", "smoke", "--set", "model.fuse=add", "--out", str(tmp_path / "x")]) == 2
    assert "model has no field 'fuse'; fields: method" in capsys.readouterr().err


@pytest.mark.slow
def test_pretrain_set_overrides_a_ddpm_field(tmp_path, capsys):
    """Smoke logs every step; ``--set ddpm.log_every=3`` over 4 steps logs step 3 and the last step."""
    assert main(["pretrain", "--profile", "smoke", "--steps", "4", "--set", "ddpm.log_every=3", "--set",
                 "ddpm.sample_every=1000", "--out", str(tmp_path / "run")]) == 0
    with open(tmp_path / "run" / "loss_log.csv") as fh:
        assert [r["step"] for r in csv.DictReader(fh)] == ["3", "4"]


@pytest.mark.parametrize("item,message", [
    ("ddpm.log_evry=1", "--set 'ddpm.log_evry=1': ddpm has no field 'log_evry'; fields: "),
    ("dpm.log_every=1", "--set 'dpm.log_every=1': no section 'dpm'; sections: data, ddpm, features, model, train"),
    ("log_every=1", "--set 'log_every=1': use section.field=value"),
])
def test_bad_set_key_exits_2_with_one_line(tmp_path, item, message, capsys):
    assert main(["pretrain", "--profile", "smoke", "--set", item, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_a_smoke_sweep_writes_beside_the_quick_folders_not_into_them(tmp_path, monkeypatch, capsys):
    """``sweep --profile smoke`` must neither resume from nor add rows to what a quick sweep keeps in
    results/ and runs/sweep/ (its table reads every result in its folder)."""
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "stages", "--profile", "smoke"]) == 0
    assert sorted(p.name for p in (tmp_path / "results_smoke").glob("*.json")) == [
        "stages-late.json", "stages-multistage.json", "stages-none.json"]
    assert (tmp_path / "runs" / "sweep_smoke" / "stages-late" / "summary.json").is_file()
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs" / "sweep").exists()
    assert "stages-multistage" in capsys.readouterr().out
