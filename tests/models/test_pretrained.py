"""ImageNet HRNet weights by timm model name (download patched to a local file) or from a file."""

from __future__ import annotations

import pytest
import torch

from diffhrnet_lab.config import profile_config
from diffhrnet_lab.errors import ConfigError, DataError
from diffhrnet_lab.models.hrnet import HRNetBackbone
from diffhrnet_lab.models.pretrained import load_timm_backbone

timm = pytest.importorskip("timm")
import timm.models._hub as timm_hub  # noqa: E402
from huggingface_hub.errors import LocalEntryNotFoundError  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

NAME = "hrnet_w18_small_v2.ms_in1k"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """timm's classification model with random weights, saved as the Hub's model.safetensors."""
    torch.manual_seed(0)
    model = timm.create_model("hrnet_w18_small_v2", pretrained=False)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("hub") / "model.safetensors"
    save_file(state, str(path))
    return path, state


def _fresh() -> HRNetBackbone:
    torch.manual_seed(1)
    return HRNetBackbone("w18_small", in_channels=3)


def test_timm_name_loads_imagenet_weights_through_timms_hub_download(source, monkeypatch):
    path, state = source
    asked = []

    def fake_download(repo_id, filename, **kw):
        asked.append((repo_id, filename))
        return str(path)

    monkeypatch.setattr(timm_hub, "hf_hub_download", fake_download)
    backbone = _fresh()
    assert not torch.equal(backbone.state_dict()["stem.conv1.weight"], state["conv1.weight"])
    load_timm_backbone(backbone, NAME)
    assert asked and asked[0][0] == "timm/hrnet_w18_small_v2.ms_in1k"
    got = backbone.state_dict()
    assert torch.equal(got["stem.conv1.weight"], state["conv1.weight"])
    assert torch.equal(got["stem.bn1.running_var"], state["bn1.running_var"])
    key = "stage2.0.branches.0.0.conv1.weight"
    assert torch.equal(got[key], state[key])
    assert torch.equal(got["stage1.0.conv1.weight"], state["layer1.0.conv1.weight"])


def test_local_safetensors_file_still_works(source):
    path, state = source
    backbone = _fresh()
    load_timm_backbone(backbone, str(path))  # the classification keys: the head is left out by conversion
    assert torch.equal(backbone.state_dict()["stem.conv2.weight"], state["conv2.weight"])
    with pytest.raises(DataError, match="missing.safetensors: file not found"):
        load_timm_backbone(backbone, str(path.parent / "missing.safetensors"))


def test_offline_and_not_cached_is_a_config_error(monkeypatch):
    def offline(*a, **kw):
        raise LocalEntryNotFoundError("cannot reach huggingface.co and the file is not in the cache")

    monkeypatch.setattr(timm_hub, "hf_hub_download", offline)
    with pytest.raises(ConfigError, match="cannot download its ImageNet weights.*local .safetensors"):
        load_timm_backbone(_fresh(), NAME)


def test_wrong_architecture_or_unknown_name_named_before_any_download(monkeypatch):
    monkeypatch.setattr(timm_hub, "hf_hub_download", lambda *a, **k: pytest.fail("no download expected"))
    with pytest.raises(ConfigError, match="is timm's hrnet_w18_small, but model.variant 'w18_small' is hrnet_w18_small_v2"):
        load_timm_backbone(_fresh(), "hrnet_w18_small.ms_in1k")
    assert profile_config("smoke").model.init_timm == ""
