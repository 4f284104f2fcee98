"""What a user is told, and what is left on disk, when a command fails on its inputs or a run is resumed."""

from __future__ import annotations

from pathlib import Path

import posecore_resume
import pytest

from helpers import posecore, write_tiny_config
from posecore.testing import run_training


def _everything_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def trained(tmp_path) -> tuple[Path, Path]:
    """A tiny config and the checkpoint of its 4-iteration run."""
    config = write_tiny_config(tmp_path)
    assert posecore("train", str(config), "--work-dir", str(tmp_path / "trained")).returncode == 0
    return config, tmp_path / "trained" / "iter_4.pth"


def test_commands_that_fail_on_their_inputs_create_nothing(tmp_path, trained, synthetic_coco):
    config, weights = trained
    folder = tmp_path / "cwd"
    folder.mkdir()
    missing = tmp_path / "missing.pth"
    image = synthetic_coco.img_dir / "figures_0.jpg"
    dataset = {"type": "CocoKeypoints", "ann_file": str(tmp_path / "nowhere.json"), "img_dir": str(tmp_path)}
    bad_data = write_tiny_config(folder, train_dataloader={"batch_size": 4, "num_workers": 0, "dataset": dataset})
    commands = {
        "test": ["test", str(config), "--checkpoint", str(missing)],
        "predict": ["predict", str(image), "--config", str(config), "--checkpoint", str(missing)],
        "train": ["train", str(bad_data)],
        "train --resume of a finished run": ["train", str(config), "--work-dir", str(weights.parent), "--resume"],
    }
    before = _everything_under(weights.parent)
    for name, args in commands.items():
        result = posecore(*args, cwd=folder)
        assert result.returncode == (0 if "finished" in name else 2), (name, result.stderr)
        assert _everything_under(folder) == ["tiny.toml"], f"{name} left files behind"
        assert _everything_under(weights.parent) == before, f"{name} changed the work dir"
    assert "is complete at iteration 4 (train.max_iters 4)" in result.stderr


def test_a_run_resumed_with_a_longer_schedule_says_so(tmp_path):
    run_training(tmp_path, plugins={"resume": posecore_resume})
    longer = run_training(tmp_path, plugins={"resume": posecore_resume},
                          cfg_options=["resume=true", "train.max_iters=6"])
    log = (longer.run.run_dir / f"{longer.run.run_dir.name}.log").read_text()
    assert ("WARNING - resume: the run is now 6 iterations long, was 4: the learning-rate schedule is recomputed for "
            "the new length from iteration 4 on") in log
    same = run_training(tmp_path, plugins={"resume": posecore_resume},
                        cfg_options=["resume=true", "train.max_iters=8"])
    assert "was 6:" in (same.run.run_dir / f"{same.run.run_dir.name}.log").read_text()


def test_the_stop_message_gives_the_command_that_continues(tmp_path):
    from posecore.cli import resume_command

    assert resume_command(["train", "run.toml", "--work-dir", "my runs/a", "--cfg-options", "optim.lr=0.1",
                           "--cfg-options", "codec.input_size=[192, 256]"]) == (
        "posecore train run.toml --work-dir 'my runs/a' --resume --cfg-options optim.lr=0.1 "
        "'codec.input_size=[192, 256]'")
    # --resume PATH becomes --resume: the stopped run saved into its own work dir
    assert resume_command(["train", "run.toml", "--resume", "other/iter_8.pth", "--amp"]) == \
        "posecore train run.toml --amp --resume"
    assert resume_command(["train", "--work-dir", "wd", "run.toml", "--resume"]) == \
        "posecore train --work-dir wd run.toml --resume"
    assert resume_command(["train", "run.toml"]) == "posecore train run.toml --resume"
