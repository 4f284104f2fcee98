"""Exact resume: a run killed from the outside at any moment and resumed ends bitwise equal to one never stopped.

The runs shuffle, augment (flip, scale, rotation) and use dropout, so every random stream matters; the
checkpoint interval (4) does not divide the epoch (6 batches), so resumes start mid-epoch.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import posecore, write_tiny_config

ITERS = 30
OPTIONS = [f"train.max_iters={ITERS}", "train.log_interval=1", "train.val_interval=10", "checkpoint.interval=4",
           "checkpoint.max_keep=0", "model.dropout=0.2", "augment.flip_prob=0.5", "augment.rotate_prob=1.0"]


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    return write_tiny_config(tmp_path_factory.mktemp("exact"))


def train(config: Path, work_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """Train with OPTIONS; ``args`` may start with flags (``--resume``) and go on with KEY=VALUE pairs."""
    flags = [a for a in args if a.startswith("--")]
    pairs = [a for a in args if not a.startswith("--")]
    result = posecore("train", str(config), "--work-dir", str(work_dir), *flags, "--cfg-options", *OPTIONS, *pairs)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def straight(config, tmp_path_factory) -> Path:
    """The uninterrupted run, seeded; its result must not depend on num_workers, so one serves all cases."""
    work_dir = tmp_path_factory.mktemp("straight")
    train(config, work_dir, "randomness.seed=11")
    return work_dir


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert first["model"].keys() == second["model"].keys()
    different = [k for k in first["model"] if not torch.equal(first["model"][k], second["model"][k])]
    assert not different, f"tensors differ: {different[:5]}"
    assert first["loop"] == second["loop"]


def kill_during_training(config: Path, work_dir: Path, sig: int, *options: str) -> int:
    """Start a run, send ``sig`` once it has logged iteration 10 of 30; return its exit code."""
    proc = subprocess.Popen([sys.executable, "-m", "posecore", "train", str(config), "--work-dir", str(work_dir),
                             "--cfg-options", *OPTIONS, *options], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        logs = list(work_dir.glob("*/*.log"))
        if logs and f"Iter(train) [10/{ITERS}]" in logs[0].read_text():
            break
        time.sleep(0.02)
    proc.send_signal(sig)
    code = proc.wait(timeout=120)
    assert not (work_dir / f"iter_{ITERS}.pth").exists(), "the run finished before the signal: nothing tested"
    return code


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("sig, code", [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, 143)])
def test_killed_and_resumed_equals_uninterrupted(config, straight, tmp_path, workers, sig, code):
    work_dir = tmp_path / "wd"
    seeded = ["randomness.seed=11", f"train_dataloader.num_workers={workers}"]
    assert kill_during_training(config, work_dir, sig, *seeded) == code
    resumed = train(config, work_dir, "--resume", *seeded)
    assert "resumed from" in resumed.stderr
    assert_same_weights(straight / f"iter_{ITERS}.pth", work_dir / f"iter_{ITERS}.pth")


@pytest.mark.slow
def test_resume_is_exact_without_randomness_section(config, tmp_path):
    """No [randomness]: the drawn data seed and every generator's state come back from the checkpoint."""
    first = tmp_path / "first"
    train(config, first)
    second = tmp_path / "second"
    second.mkdir()
    for name in ("iter_8.pth", "iter_8.pth.xxh128"):  # a mid-epoch checkpoint, as a crash would leave it
        shutil.copy(first / name, second / name)
    resumed = train(config, second, "--resume")
    assert "resumed from" in resumed.stderr and "at iteration 8" in resumed.stderr
    assert_same_weights(first / f"iter_{ITERS}.pth", second / f"iter_{ITERS}.pth")


@pytest.mark.slow
def test_num_workers_does_not_change_the_result(config, straight, tmp_path):
    train(config, tmp_path, "randomness.seed=11", "train_dataloader.num_workers=2")
    assert_same_weights(straight / f"iter_{ITERS}.pth", tmp_path / f"iter_{ITERS}.pth")


@pytest.mark.slow
def test_killed_and_resumed_amp_run_equals_uninterrupted(config, tmp_path):
    """With posecore-amp (bfloat16 on a CPU; float16 adds the scaler, whose state is checkpointed too)."""
    seeded = ["randomness.seed=5"]
    train(config, tmp_path / "straight", "--amp", *seeded)
    assert kill_during_training(config, tmp_path / "killed", signal.SIGKILL, "amp.enabled=true", *seeded) == \
        -signal.SIGKILL
    resumed = train(config, tmp_path / "killed", "--resume", "--amp", *seeded)
    assert "resumed from" in resumed.stderr and "plugins: amp-0.1.0" in resumed.stderr
    assert_same_weights(tmp_path / "straight" / f"iter_{ITERS}.pth", tmp_path / "killed" / f"iter_{ITERS}.pth")
