"""posecore-seed: one seed gives bitwise identical runs; an unset seed is drawn, logged and recorded."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import posecore_seed
import pytest
import torch

from helpers import posecore, write_tiny_config as write_tiny
from posecore.config import loads
from posecore.errors import ConfigError
from posecore.testing import run_training




def train(work_dir: Path, *options: str) -> tuple[dict, int]:
    """Train the tiny config in this process with the seed plugin; the final checkpoint and the seed used."""
    recording = run_training(work_dir, plugins={"seed": posecore_seed}, cfg_options=["plugins=['seed']", *options])
    return torch.load(work_dir / "iter_4.pth", weights_only=True), recording.run.seed


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_gives_bitwise_identical_weights_and_another_seed_does_not(tmp_path):
    # Dropout makes the torch generator matter during training too, not only at initialisation.
    first, _ = train(tmp_path / "a", "randomness.seed=2023", "model.dropout=0.5")
    again, _ = train(tmp_path / "b", "randomness.seed=2023", "model.dropout=0.5")
    other, _ = train(tmp_path / "c", "randomness.seed=2024", "model.dropout=0.5")
    assert same_tensors(first["model"], again["model"])
    assert same_tensors(first["optimizer"]["state"][0], again["optimizer"]["state"][0])
    assert not same_tensors(first["model"], other["model"])


def test_a_drawn_seed_reproduces_its_run(tmp_path):
    drawn_state, drawn = train(tmp_path / "drawn")
    assert drawn_state["seed"] == drawn
    again, seed = train(tmp_path / "again", f"randomness.seed={drawn}")
    assert seed == drawn
    assert same_tensors(drawn_state["model"], again["model"])


@pytest.mark.parametrize("seed", [0, 2**63 - 1])
def test_the_schema_bounds_are_seeds_every_generator_accepts(tmp_path, seed):
    state, used = train(tmp_path / "wd", f"randomness.seed={seed}")
    assert used == seed and state["seed"] == seed


def test_seed_out_of_range_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"'randomness.seed' is -1, must be >= 0"):
        train(tmp_path / "wd", "randomness.seed=-1")


def test_unset_seed_is_drawn_and_appears_in_log_checkpoint_and_config(tmp_path):
    work_dir = tmp_path / "wd"
    result = posecore("train", str(write_tiny(tmp_path)), "--work-dir", str(work_dir), "--plugin", "seed")
    assert result.returncode == 0, result.stderr
    assert "plugins: seed-0.1.0" in result.stderr
    drawn = int(re.search(r"randomness\.seed not set: drew seed (\d+)", result.stderr).group(1))

    (run_dir,) = [p for p in work_dir.iterdir() if p.is_dir()]
    assert f"drew seed {drawn}" in (run_dir / f"{run_dir.name}.log").read_text()
    assert loads((run_dir / "vis_data" / "config.toml").read_text())["randomness"]["seed"] == drawn
    state = torch.load(work_dir / "iter_4.pth", weights_only=True)
    assert state["seed"] == drawn
    assert loads(state["config"])["randomness"]["seed"] == drawn
    assert state["meta"]["plugins"]["seed"] == "0.1.0"


def test_checkpoint_holds_the_seed_and_every_generator_state(tmp_path):
    state, seed = train(tmp_path / "wd", "randomness.seed=7")
    (saved,) = state["rng"]  # one entry per rank; the core keeps them, so runs resume exactly without this plugin too
    assert set(saved) == {"python", "numpy", "torch", "cuda"}
    assert state["seed"] == seed == 7
    assert saved["python"]["state"].dtype == torch.int64 and saved["python"]["state"].numel() == 625
    assert saved["numpy"]["keys"].numel() == 624 and isinstance(saved["numpy"]["pos"], int)
    assert torch.equal(saved["torch"], torch.get_rng_state())  # nothing drew from it after the last save
    assert len(saved["cuda"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert "seed" not in state["plugins"]


DETERMINISM_PROBE = """
import json, os, sys
from pathlib import Path

import torch
import posecore_seed
from posecore import hookimpl
from posecore.testing import run_training


def flags():
    return {"cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark, "algorithms": torch.are_deterministic_algorithms_enabled(),
            "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}


class Recorder:
    during = []

    @staticmethod
    @hookimpl
    def after_iter(run, loss):
        Recorder.during.append(flags())


torch.backends.cudnn.benchmark = True  # a setting of the caller's, to be put back
for workspace in (None, ":16:8"):  # unset, or set by the caller
    if workspace is not None:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace
    before, Recorder.during = flags(), []
    recording = run_training(Path(sys.argv[1], str(workspace)), plugins={"seed": posecore_seed, "recorder": Recorder},
                             cfg_options=["plugins=['seed', 'recorder']", "randomness.seed=1",
                                          "randomness.deterministic=true"])
    print(json.dumps({"before": before, "during": Recorder.during, "after": flags(),
                      "iterations": recording.run.iteration}))
"""


def test_deterministic_mode_holds_during_the_run_and_is_undone_after(tmp_path):
    # In a fresh process: the flags are process-wide, and a plugin that did not restore them would leave
    # them changed for every later test.
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    result = subprocess.run([sys.executable, "-c", DETERMINISM_PROBE, str(tmp_path)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    runs = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(runs) == 2, result.stdout
    for workspace, seen in zip((None, ":16:8"), runs):
        assert seen["iterations"] == 4 and len(seen["during"]) == 4
        deterministic = {"cudnn_deterministic": True, "cudnn_benchmark": False, "algorithms": True,
                         "CUBLAS_WORKSPACE_CONFIG": workspace or ":4096:8"}  # one the caller set is kept
        assert seen["during"] == [deterministic] * 4
        assert seen["before"] == {"cudnn_deterministic": False, "cudnn_benchmark": True, "algorithms": False,
                                  "CUBLAS_WORKSPACE_CONFIG": workspace}
        assert seen["after"] == seen["before"], "not put back after the run"
