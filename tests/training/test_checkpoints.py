"""Resumable state in safetensors + JSON: round trip, refused mismatches, fault points."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from diffhrnet_lab.errors import ConfigError
from diffhrnet_lab.training.checkpoints import read_state, write_state


def _stepped_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        model(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def test_write_state_then_read_state_restores_tensors_optimizer_and_state(tmp_path):
    model, opt = _stepped_optimizer()
    ema = {"weight": torch.randn(2, 3), "bias": torch.randn(2)}
    config = {"batch_size": 4, "seed": 1, "train": {"lr": 1e-2}}
    write_state(tmp_path, {"ema": ema, "rng": {"noise": torch.arange(5, dtype=torch.uint8)}}, opt,
                {"step": 3, "config": config})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ema.safetensors", "optimizer.json", "optimizer.safetensors",
                                                          "rng.safetensors", "state.json"]
    twin = torch.nn.Linear(3, 2)
    twin.load_state_dict(model.state_dict())
    fresh = torch.optim.AdamW(twin.parameters(), lr=5.0)
    state = read_state(tmp_path, fresh, {"batch_size": 4, "seed": 1, "train.lr": 1e-2})
    assert state == {"step": 3, "config": config}
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"] and b["param_groups"][0]["lr"] == 1e-2
    assert b["param_groups"][0]["betas"] == (0.9, 0.999)  # a tuple again, as AdamW made it
    for idx in a["state"]:
        assert set(a["state"][idx]) == set(b["state"][idx]) == {"step", "exp_avg", "exp_avg_sq"}
        for k in a["state"][idx]:
            assert torch.equal(torch.as_tensor(a["state"][idx][k]), torch.as_tensor(b["state"][idx][k])), k
    x = torch.randn(4, 3)
    for m, o in ((model, opt), (twin, fresh)):  # the next update is the same: the run continues exactly
        m(x).pow(2).sum().backward()
        o.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))
    from diffhrnet_lab.fileio import load_tensors

    back = load_tensors(tmp_path / "ema.safetensors")
    assert all(torch.equal(back[k], ema[k]) for k in ema)


@pytest.mark.parametrize("same,named", [({"batch_size": 8}, "batch_size=4 but this run has 8"),
                                        ({"seed": 1, "train.lr": 0.5}, "train.lr=0.01 but this run has 0.5"),
                                        ({"train.steps": 10}, "train.steps=None but this run has 10")])
def test_read_state_refuses_a_mismatched_setting_naming_it(tmp_path, same, named):
    _, opt = _stepped_optimizer()
    write_state(tmp_path, {}, opt, {"step": 3, "config": {"batch_size": 4, "seed": 1, "train": {"lr": 0.01}}})
    before = [g["lr"] for g in opt.param_groups]
    fresh = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=5.0)
    with pytest.raises(ConfigError, match=named.replace("(", r"\(")) as e:
        read_state(tmp_path, fresh, same)
    assert str(tmp_path) in str(e.value)
    assert fresh.param_groups[0]["lr"] == 5.0 and not fresh.state  # nothing loaded before the check
    assert before == [0.01]


def test_a_setting_the_checkpoint_predates_is_compared_as_its_old_default(tmp_path):
    _, opt = _stepped_optimizer()
    write_state(tmp_path, {}, opt, {"step": 3, "config": {"model": {"stages": "late"}}})
    fresh = lambda: torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=5.0)  # noqa: E731
    before = {"model.residual": False}
    assert read_state(tmp_path, fresh(), {"model.stages": "late", "model.residual": False}, before)["step"] == 3
    with pytest.raises(ConfigError, match="model.residual=False but this run has True"):
        read_state(tmp_path, fresh(), {"model.residual": True}, before)
    with pytest.raises(ConfigError, match="model.residual=None"):  # no default given: absent stays absent
        read_state(tmp_path, fresh(), {"model.residual": False})


@pytest.mark.parametrize("fault,killed", [("kill:step:3", True), ("kill:step:4", False),
                                          ("kill:checkpoint-write:3", False), ("", False)])
def test_fault_point_kills_only_at_its_place_and_step(fault, killed):
    code = ("from diffhrnet_lab.training.checkpoints import fault_point\n"
            "for s in (1, 2, 3):\n    fault_point('step', s)\nprint('survived')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "DHL_FAULT": fault})
    assert (r.returncode, "survived" in r.stdout) == ((-signal.SIGKILL, False) if killed else (0, True)), r.stderr


def test_state_json_is_plain_json(tmp_path):
    _, opt = _stepped_optimizer()
    write_state(tmp_path, {}, opt, {"step": 1, "config": {"out": tmp_path}})  # a Path is written as text
    assert json.loads((tmp_path / "state.json").read_text())["config"]["out"] == str(tmp_path)
