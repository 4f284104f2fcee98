"""posecore-seed: one seed gives bitwise identical runs; an unset seed is drawn, logged and recorded."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import posecore_seed
import pytest
import torch

from helpers import posecore, write_tiny_config as write_tiny
from posecore.errors import ConfigError
from posecore.testing import run_training

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib




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
    assert tomllib.loads((run_dir / "vis_data" / "config.toml").read_text())["randomness"]["seed"] == drawn
    state = torch.load(work_dir / "iter_4.pth", weights_only=True)
    assert state["seed"] == drawn
    assert tomllib.loads(state["config"])["randomness"]["seed"] == drawn
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


def test_deterministic_mode_runs(tmp_path):
    # In a fresh process: torch.use_deterministic_algorithms(True) is process-wide and stays on.
    work_dir = tmp_path / "wd"
    result = posecore("train", str(write_tiny(tmp_path)), "--work-dir", str(work_dir), "--cfg-options",
                      "randomness.seed=1", "randomness.deterministic=true")
    assert result.returncode == 0, result.stderr
    state = torch.load(work_dir / "iter_4.pth", weights_only=True)
    assert state["loop"]["iteration"] == 4
    assert tomllib.loads(state["config"])["randomness"]["deterministic"] is True

