"""checkpoint.async: background writes that keep every guarantee of synchronous ones."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from posecore import checkpoint
from posecore.errors import CheckpointError
from posecore.testing import run_training

ASYNC = ["checkpoint.async=true", "checkpoint.interval=1", "checkpoint.max_keep=0"]


def pointer(work_dir: Path) -> str | None:
    path = work_dir / checkpoint.LAST_CHECKPOINT
    return Path(path.read_text()).name if path.exists() else None


def assert_same_checkpoints(a: Path, b: Path) -> None:
    for iteration in range(1, 5):
        name = f"iter_{iteration}.pth"
        checkpoint.verify(b / name)
        first, second = checkpoint.load(a / name), checkpoint.load(b / name)
        assert all(torch.equal(first["model"][k], second["model"][k]) for k in first["model"]), name
        assert first["loop"] == second["loop"]
        moments = zip(first["optimizer"]["state"].values(), second["optimizer"]["state"].values())
        assert all(torch.equal(x["exp_avg"], y["exp_avg"]) for x, y in moments), name


SEEDED = ["checkpoint.interval=1", "checkpoint.max_keep=0", "model.dropout=0.3", "randomness.seed=3"]


def test_async_writes_one_at_a_time_same_contents_pointers_after_and_the_run_waits(tmp_path, monkeypatch):
    real_save, in_flight, seen = checkpoint.save, [], []

    def slow_save(path: Path, state: dict) -> None:
        in_flight.append(path)
        seen.append((len(in_flight), threading.current_thread().name, pointer(path.parent), path.name))
        time.sleep(0.2)
        real_save(path, state)
        in_flight.remove(path)

    run_training(tmp_path / "sync", cfg_options=SEEDED, use_installed=True)
    monkeypatch.setattr(checkpoint, "save", slow_save)
    started = time.monotonic()
    run_training(tmp_path / "async", cfg_options=[*SEEDED, "checkpoint.async=true"], use_installed=True)
    assert time.monotonic() - started >= 0.8  # four writes of 0.2 s, none skipped or cut short
    assert [concurrent for concurrent, *_ in seen] == [1, 1, 1, 1]
    assert all(thread == "posecore-checkpoint-writer" for _, thread, *_ in seen)
    # While iter_N is being written, the pointer still names the previous, complete checkpoint.
    assert [(before, name) for *_, before, name in seen] == [
        (None, "iter_1.pth"), ("iter_1.pth", "iter_2.pth"), ("iter_2.pth", "iter_3.pth"), ("iter_3.pth", "iter_4.pth")]
    assert pointer(tmp_path / "async") == "iter_4.pth"  # the run returned only after the last write
    # Training went on during each 0.2 s write: a snapshot sharing memory with the live weights or
    # optimizer state would have saved later values than the synchronous run did.
    assert_same_checkpoints(tmp_path / "sync", tmp_path / "async")


def test_a_failed_background_write_stops_the_run_at_the_next_iteration(tmp_path, monkeypatch):
    real_save = checkpoint.save

    def failing_save(path: Path, state: dict) -> None:
        if path.name == "iter_2.pth":
            raise OSError(28, "No space left on device")
        real_save(path, state)

    monkeypatch.setattr(checkpoint, "save", failing_save)
    with pytest.raises(CheckpointError) as failure:
        run_training(tmp_path, cfg_options=ASYNC)
    message = str(failure.value)
    assert "background write of checkpoint iter_2.pth failed (OSError: [Errno 28] No space left on device)" in message
    assert "the previous checkpoint is still the latest" in message
    assert failure.value.recording.run.iteration in (2, 3)  # raised at the next iteration boundary
    assert pointer(tmp_path) == "iter_1.pth" and not (tmp_path / "iter_2.pth").exists()


class StopAtTwo:
    """A plugin that asks the run to stop after iteration 2, as a preemption signal would."""

    from posecore import hookimpl

    @staticmethod
    @hookimpl
    def after_iter(run, loss) -> None:
        if run.iteration == 2:
            run.request_stop("stop requested by the test")


def test_a_stopped_run_waits_for_its_background_write(tmp_path, monkeypatch):
    real_save = checkpoint.save

    def slow_save(path: Path, state: dict) -> None:
        time.sleep(0.3)
        real_save(path, state)

    monkeypatch.setattr(checkpoint, "save", slow_save)
    recording = run_training(tmp_path, plugins={"stopper": StopAtTwo}, cfg_options=[
        "checkpoint.async=true", "checkpoint.interval=100", "plugins=['stopper']"])
    assert recording.run.iteration == 2
    assert pointer(tmp_path) == "iter_2.pth"  # written in the background, complete before the run returned
    checkpoint.verify(tmp_path / "iter_2.pth")
