"""Exact resume: a run killed at any point and resumed ends bitwise equal to one never stopped.

The runs shuffle, augment (flip, scale, rotation) and use dropout, so every random stream matters; the
checkpoint interval (4) does not divide the epoch (10 batches), so resumes start mid-epoch. Each run is
stopped at a known point by the ``interrupt`` plugin (tests/interruptions.py), never by a race, and
every checkpoint is compared entry by entry, with the logged series.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from helpers import posecore, write_tiny_config
from interruptions import IGNORED, assert_same_checkpoints, assert_same_run, install_interrupter, interrupt_env
from posecore import checkpoint

ITERS = 30
OPTIONS = [f"train.max_iters={ITERS}", "train.log_interval=1", "train.val_interval=10", "checkpoint.interval=4",
           "checkpoint.max_keep=0", "checkpoint.save_best=PCK", "model.dropout=0.2", "augment.flip_prob=0.5",
           "augment.rotate_prob=1.0", "train_dataloader.dataset.num_samples=40", "val_dataloader.batch_size=4"]
SEEDED = ["randomness.seed=11"]
WORKERS_DIFFER = IGNORED | {("config", "train_dataloader", "num_workers")}  # results do not depend on them


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    return write_tiny_config(tmp_path_factory.mktemp("exact"))


@pytest.fixture(scope="module")
def interrupter(tmp_path_factory) -> Path:
    return install_interrupter(tmp_path_factory.mktemp("interrupter"))


def train(config: Path, work_dir: Path, interrupter: Path, *args: str, env: dict[str, str] | None = None,
          code: int = 0) -> subprocess.CompletedProcess:
    """Train with OPTIONS and the ``interrupt`` plugin (``env`` from interrupt_env; none: never); check the exit
    code. ``args`` may start with flags (``--resume``) and go on with KEY=VALUE pairs."""
    flags = [a for a in args if a.startswith("--")]
    pairs = [a for a in args if not a.startswith("--")]
    result = posecore("train", str(config), "--work-dir", str(work_dir), "--plugin", "interrupt", *flags,
                      "--cfg-options", *OPTIONS, *pairs, pythonpath=[interrupter], env=env)
    assert result.returncode == code, result.stderr
    if code:
        assert not (work_dir / f"iter_{ITERS}.pth").exists(), "the interrupted run finished"
    return result


def resume(config: Path, work_dir: Path, interrupter: Path, at: int, *args: str,
           env: dict[str, str] | None = None, code: int = 0) -> subprocess.CompletedProcess:
    """``--resume`` in ``work_dir``, checking that it goes on from iteration ``at``."""
    result = train(config, work_dir, interrupter, "--resume", *args, env=env, code=code)
    assert f"resumed from {work_dir / f'iter_{at}.pth'} at iteration {at}" in result.stderr, result.stderr
    return result


@pytest.fixture(scope="module")
def straight(config, interrupter, tmp_path_factory) -> Path:
    """The uninterrupted run, seeded; its result must not depend on num_workers, so one serves all cases."""
    work_dir = tmp_path_factory.mktemp("straight")
    train(config, work_dir, interrupter, *SEEDED)
    return work_dir


@pytest.mark.slow
@pytest.mark.parametrize("by, code, resumed_at, workers", [
    ("SIGKILL", -signal.SIGKILL, 8, 0),
    ("SIGKILL", -signal.SIGKILL, 8, 2),
    ("SIGTERM", 143, 10, 0),
    ("group:SIGTERM", 143, 10, 2),  # as a container stop or scancel sends it: to the workers too
])
def test_killed_and_resumed_equals_uninterrupted(config, interrupter, straight, tmp_path, by, code, resumed_at,
                                                 workers):
    work_dir = tmp_path / "wd"
    seeded = [*SEEDED, f"train_dataloader.num_workers={workers}"]
    train(config, work_dir, interrupter, *seeded, env=interrupt_env(10, by), code=code)
    resume(config, work_dir, interrupter, resumed_at, *seeded)
    assert_same_run(straight, work_dir, WORKERS_DIFFER)


@pytest.mark.slow
def test_killed_twice_in_one_epoch_and_resumed_equals_uninterrupted(config, interrupter, straight, tmp_path):
    """Epoch 1 is iterations 11-20: killed in 14 (back to 12), then the resumed run killed in 18 (back to 16)."""
    work_dir = tmp_path / "wd"
    train(config, work_dir, interrupter, *SEEDED, env=interrupt_env(14), code=-signal.SIGKILL)
    resume(config, work_dir, interrupter, 12, *SEEDED, env=interrupt_env(18), code=-signal.SIGKILL)
    assert [checkpoint.load(work_dir / f"iter_{i}.pth")["loop"]["epoch"] for i in (12, 16)] == [1, 1]
    resume(config, work_dir, interrupter, 16, *SEEDED)
    assert_same_run(straight, work_dir)


@pytest.mark.slow
def test_killed_during_a_background_checkpoint_write_resumes_from_the_previous_one(config, interrupter, straight,
                                                                                  tmp_path):
    work_dir = tmp_path / "wd"
    background = [*SEEDED, "checkpoint.async=true"]
    train(config, work_dir, interrupter, *background, env=interrupt_env(12, during="checkpoint_write"),
          code=-signal.SIGKILL)
    assert list(work_dir.glob(".iter_12.pth.tmp*")), "not killed while iter_12.pth was being written"
    assert not (work_dir / "iter_12.pth").exists()
    assert Path((work_dir / checkpoint.LAST_CHECKPOINT).read_text()).name == "iter_8.pth"
    resume(config, work_dir, interrupter, 8, *background)
    # Written in the background or not, the checkpoints are the same.
    assert_same_run(straight, work_dir, IGNORED | {("config", "checkpoint", "async")})


@pytest.mark.slow
@pytest.mark.parametrize("by, code, resumed_at", [("SIGKILL", -signal.SIGKILL, 8), ("SIGTERM", 143, 10)])
def test_killed_during_validation_and_resumed_equals_uninterrupted(config, interrupter, straight, tmp_path, by,
                                                                   code, resumed_at):
    """Validation at iteration 10 is interrupted after its first batch (of two); SIGTERM lets it finish,
    keep the best checkpoint and save iteration 10."""
    work_dir = tmp_path / "wd"
    train(config, work_dir, interrupter, *SEEDED, env=interrupt_env(10, by, during="validation"), code=code)
    resume(config, work_dir, interrupter, resumed_at, *SEEDED)
    assert_same_run(straight, work_dir)


@pytest.mark.slow
def test_killed_while_logging_and_resumed_drops_the_torn_record(config, interrupter, straight, tmp_path):
    """Killed with half of iteration 10's scalars.json record written, as a crash mid-write leaves it."""
    work_dir = tmp_path / "wd"
    train(config, work_dir, interrupter, *SEEDED, env=interrupt_env(10, during="scalars_write"),
          code=-signal.SIGKILL)
    (scalars,) = work_dir.glob("*/vis_data/scalars.json")
    assert not scalars.read_text().endswith("\n"), "not killed in the middle of a record"
    resume(config, work_dir, interrupter, 8, *SEEDED)
    assert_same_run(straight, work_dir)


@pytest.mark.slow
def test_resume_is_exact_without_randomness_section(config, interrupter, tmp_path):
    """No [randomness]: the drawn data seed and every generator's state come back from the checkpoint."""
    first, second = tmp_path / "first", tmp_path / "second"
    train(config, first, interrupter)
    second.mkdir()
    for name in ("iter_4.pth", "iter_8.pth"):  # up to a mid-epoch checkpoint, as a crash would leave them
        for path in (first / name, checkpoint.checksum_path(first / name)):
            shutil.copy(path, second / path.name)
    resume(config, second, interrupter, 8)
    assert_same_checkpoints(first, second)


@pytest.mark.slow
def test_num_workers_does_not_change_the_result(config, interrupter, straight, tmp_path):
    train(config, tmp_path, interrupter, *SEEDED, "train_dataloader.num_workers=2")
    assert_same_run(straight, tmp_path, WORKERS_DIFFER)


@pytest.mark.slow
def test_killed_and_resumed_amp_run_equals_uninterrupted(config, interrupter, tmp_path):
    """With posecore-amp (bfloat16 on a CPU; float16 adds the scaler, whose state is checkpointed too) and
    posecore-tensorboard, whose series must go on as if never stopped."""
    amp = ["--amp", "--plugin=tensorboard", "randomness.seed=5"]
    train(config, tmp_path / "straight", interrupter, *amp)
    train(config, tmp_path / "killed", interrupter, *amp, env=interrupt_env(14), code=-signal.SIGKILL)
    resumed = resume(config, tmp_path / "killed", interrupter, 12, *amp)
    assert "amp-0.1.0" in resumed.stderr and "tensorboard-0.1.0" in resumed.stderr
    assert_same_run(tmp_path / "straight", tmp_path / "killed")
