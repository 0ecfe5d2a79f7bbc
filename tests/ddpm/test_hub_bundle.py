"""DDPM bundles are diffusers folders: DDPMPipeline loads them, and they go to and from the Hub by
repo id (the Hub is a local folder here: huggingface_hub's functions are patched)."""

from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, UNet2DModel

from diffhrnet_lab.cli import main
from diffhrnet_lab.data.io import BandStats, band_stats_of
from diffhrnet_lab.ddpm.unet import build_scheduler, build_unet, load_bundle, push_bundle, save_bundle
from diffhrnet_lab.errors import DataError


@pytest.fixture
def bundle(tmp_path) -> Path:
    torch.manual_seed(0)
    unet = build_unet("tiny", bands=3, sample_size=16)
    return save_bundle(tmp_path / "bundle", unet, build_scheduler("linear", 1000), _stats(), {"preset": "tiny"})


def _stats() -> BandStats:
    return band_stats_of([("x", np.arange(3 * 16 * 16, dtype=np.uint8).reshape(3, 16, 16))])


def test_bundle_loads_with_diffusers_pipeline_and_generates_one_step_sample(bundle):
    assert (bundle / "model_index.json").is_file() and (bundle / "ddpm.json").is_file()
    unet = UNet2DModel.from_pretrained(bundle / "unet")
    assert torch.equal(unet.state_dict()["conv_in.weight"], load_bundle(bundle).unet.state_dict()["conv_in.weight"])
    pipe = DDPMPipeline.from_pretrained(bundle)
    out = pipe(batch_size=2, num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape == (2, 16, 16, 3) and np.isfinite(out.images).all()
    assert 0 <= out.images.min() and out.images.max() <= 1


class FakeHub:
    """Repos as folders under ``root``: create_repo / upload_folder / snapshot_download."""

    def __init__(self, root: Path):
        self.root, self.uploads = root, []

    def install(self, monkeypatch):
        hub = self

        class Api:
            def __init__(self, token=None):
                pass

            def create_repo(self, repo_id, private=False, exist_ok=False):
                (hub.root / repo_id).mkdir(parents=True, exist_ok=exist_ok)

            def upload_folder(self, folder_path, repo_id, commit_message="", allow_patterns=None):
                hub.uploads.append((repo_id, allow_patterns))
                shutil.copytree(folder_path, hub.root / repo_id, dirs_exist_ok=True)
                return f"https://huggingface.co/{repo_id}/commit/0"

        def snapshot_download(repo_id, allow_patterns=None, local_files_only=False, **kw):
            d = hub.root / repo_id
            if not (d / "ddpm.json").is_file():
                raise huggingface_hub.errors.LocalEntryNotFoundError(f"offline and {repo_id} is not in the cache")
            return str(d)

        monkeypatch.setattr(huggingface_hub, "HfApi", Api)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)


def test_push_then_load_by_repo_id(bundle, tmp_path, monkeypatch, capsys):
    hub = FakeHub(tmp_path / "hub")
    hub.install(monkeypatch)
    (bundle / "model_index.json").unlink()  # a bundle from an older kit: push adds the index
    assert main(["push-bundle", str(bundle), "someone/ddpm-tiny"]) == 0
    assert "commit/0" in capsys.readouterr().out
    assert (hub.root / "someone/ddpm-tiny/model_index.json").is_file()
    monkeypatch.chdir(tmp_path)  # "someone/ddpm-tiny" is no local folder here
    b = load_bundle("someone/ddpm-tiny")
    assert b.path == hub.root / "someone/ddpm-tiny"
    assert np.allclose(b.stats.mean, _stats().mean)
    ref = load_bundle(bundle).unet.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in b.unet.state_dict().items())
    with pytest.raises(DataError, match="someone/other: no such local folder, and not downloadable.*LocalEntryNotFoundError: offline"):
        load_bundle("someone/other")


def test_local_folder_wins_over_a_repo_id(bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("no download expected"))
    monkeypatch.chdir(bundle.parent)
    assert load_bundle(Path("bundle")).bands == 3
    (tmp_path / "user").mkdir()
    shutil.copytree(bundle, tmp_path / "user" / "repo")
    monkeypatch.chdir(tmp_path)
    assert load_bundle("user/repo").path == Path("user/repo")
