"""What a user is told, and what is left on disk, when a command fails on its inputs or a run is resumed."""

from __future__ import annotations

import os
from pathlib import Path

import posecore_resume
import pytest

from helpers import posecore, write_tiny_config
from posecore.testing import run_training
from posecore.config import loads


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


def test_input_paths_in_a_config_file_are_relative_to_it_and_on_the_command_line_to_the_cwd(tmp_path):
    from posecore.config import read_toml
    from helpers import REPO

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    printed = posecore("config", str(REPO / "examples" / "coco_sample.toml"), cwd=elsewhere)
    assert printed.returncode == 0, printed.stderr
    merged = loads(printed.stdout)
    expected = (REPO.parent / "shared" / "data" / "coco").absolute()
    assert Path(merged["train_dataloader"]["dataset"]["img_dir"]) == Path(os.path.normpath(expected))
    assert merged["work_dir"] == "work_dirs/coco_sample"  # outputs: where the command runs
    typed = posecore("config", str(REPO / "examples" / "coco_sample.toml"), "--cfg-options",
                     "val_dataloader.dataset.ann_file=mine/val.json", cwd=elsewhere)
    assert loads(typed.stdout)["val_dataloader"]["dataset"]["ann_file"] == "mine/val.json"

    config = write_tiny_config(tmp_path, train_dataloader={"batch_size": 4, "num_workers": 0, "dataset": {
        "type": "CocoKeypoints", "ann_file": "data/nowhere.json", "img_dir": "data"}})
    missing = posecore("train", str(config), cwd=elsewhere)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1] == (
        f"posecore: error: train_dataloader.dataset.ann_file: {tmp_path / 'data' / 'nowhere.json'} does not exist (a "
        f"relative path is from the config file's folder, or from the current directory on the command line)")
    assert read_toml(config)["train_dataloader"]["dataset"]["ann_file"] == "data/nowhere.json"
