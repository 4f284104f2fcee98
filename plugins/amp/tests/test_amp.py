"""posecore-amp: --amp trains under autocast (bfloat16 on a CPU); float16 adds a loss scaler that is checkpointed."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import posecore_amp
import pytest
import torch

from helpers import posecore
from posecore import checkpoint, hookimpl
from posecore.config import dumps
from posecore.testing import TINY_CONFIG, Recording, run_training


def write_tiny(tmp_path: Path, **sections) -> Path:
    """The tiny CPU config (the quickstart model in bfloat16 takes seconds per iteration on a CPU)."""
    path = tmp_path / "tiny.toml"
    path.write_text(dumps({**copy.deepcopy(TINY_CONFIG), **sections}), encoding="utf-8")
    return path


def test_amp_flag_trains_in_bfloat16_on_cpu_end_to_end(tmp_path):
    work_dir = tmp_path / "wd"
    result = posecore("train", str(write_tiny(tmp_path)), "--work-dir", str(work_dir), "--amp")
    assert result.returncode == 0, result.stderr
    assert re.search(r"plugins: amp-0\.1\.0$", result.stderr, re.MULTILINE)  # the run header: amp alone
    assert "amp: autocast torch.bfloat16 on cpu" in result.stderr
    assert "loss_scale" not in result.stderr  # no loss scaling with bfloat16
    state = torch.load(work_dir / "iter_4.pth", weights_only=True)
    assert state["loop"]["iteration"] == 4 and state["loop"]["optimizer_steps"] == 4
    assert state["plugins"]["amp"] == {"scaler": {}}  # a disabled scaler has an empty state
    assert state["meta"]["plugins"]["amp"] == "0.1.0"
    assert all(t.dtype == torch.float32 for t in state["model"].values() if t.is_floating_point())


def test_an_amp_section_with_enabled_false_does_not_activate_it(tmp_path):
    config = write_tiny(tmp_path, amp={"enabled": False, "dtype": "bfloat16"})
    result = posecore("plugins", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    active = {row["name"]: row["active"] for row in json.loads(result.stdout)}
    assert active["amp"] is False


def test_float32_is_not_an_amp_dtype(tmp_path):
    result = posecore("train", str(write_tiny(tmp_path)), "--work-dir", str(tmp_path / "wd"),
                      "--cfg-options", 'amp.dtype="float32"')
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "posecore: error: --cfg-options: 'amp.dtype' is 'float32'; choose one of 'auto', 'float16', 'bfloat16'"]
    assert not (tmp_path / "wd").exists()


@pytest.fixture(scope="module")
def float16_run(tmp_path_factory) -> Recording:
    """One float16 run (a loss scaler is enabled on the CPU too), shared by the tests below."""
    return run_training(tmp_path_factory.mktemp("float16"), plugins={"amp": posecore_amp},
                        cfg_options=["amp.dtype=float16"])


def test_float16_checkpoints_the_loss_scaler_and_logs_its_scale(float16_run):
    recording = float16_run
    scaler = recording.run.plugin_data["amp"]
    assert scaler.is_enabled()
    saved = torch.load(recording.run.work_dir / "iter_4.pth", weights_only=True)["plugins"]["amp"]["scaler"]
    assert saved == scaler.state_dict()
    assert saved["scale"] == 2.0**16 and saved["_growth_tracker"] == 4  # four finite steps, no back-off
    assert recording.count("collect_scalars") == 2
    scalars = [json.loads(line) for line in (recording.run.vis_dir / "scalars.json").read_text().splitlines()]
    assert [line["loss_scale"] for line in scalars if "loss" in line] == [2.0**16, 2.0**16]


class ResumeFrom:
    """A stand-in for posecore-resume: restore a checkpoint in before_train."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @hookimpl
    def before_train(self, run) -> None:
        run.restore(checkpoint.load(self.path), self.path)


@pytest.mark.parametrize("order", [
    pytest.param(("restore", "amp"), id="amp-before_train-runs-first"),
    pytest.param(("amp", "restore"), id="restore-runs-first"),
])
def test_resume_restores_the_loss_scaler(float16_run, tmp_path, order):
    modules = {"amp": posecore_amp, "restore": ResumeFrom(float16_run.run.work_dir / "iter_2.pth")}
    recording = run_training(tmp_path, plugins={name: modules[name] for name in order},
                             cfg_options=["amp.dtype=float16", "plugins=['restore']"])
    assert recording.count("load_state") == 1
    assert recording.count("backward_step") == 2
    # The growth tracker counts finite steps since the last scale change: 2 restored + 2 more.
    assert recording.run.plugin_data["amp"].state_dict()["_growth_tracker"] == 4
